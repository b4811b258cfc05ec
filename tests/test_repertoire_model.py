"""MIL blocks: shapes, argument checks, exactness of masking and of chunked inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from biocls.estimators import RepertoireClassifier
from biocls.models import (
    AttentionPooling,
    CDR3Encoder,
    PatternPooling,
    RepertoireNet,
    enriched_patterns,
    pack_bag,
    position_features,
    seed_encoder,
)

POOLINGS = ["attention", "patterns"]



def random_codes(n: int, lo: int = 4, hi: int = 18, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi, (n,), generator=g)
    codes = torch.zeros(n, int(lens.max()), dtype=torch.long)
    for i, ln in enumerate(lens.tolist()):
        codes[i, :ln] = torch.randint(1, 21, (ln,), generator=g)
    return codes, lens


def naive_encoder(enc: CDR3Encoder, codes, lens):
    """One-hot + position features, conv1d, max over valid positions: the textbook definition."""
    k = enc.kernel_size
    w = torch.cat([enc.residue_weight.permute(2, 1, 0), enc.position_weight], 1)  # [F, 23, K]
    out = []
    for c, ln in zip(codes, lens.tolist(), strict=False):
        oh = F.one_hot(c[:ln], 21).float().t()[1:]
        x = torch.cat([oh, position_features(ln)], 0)[None]
        y = F.conv1d(F.pad(x, (k // 2, k - 1 - k // 2)), w)[0]
        out.append(F.relu(y.amax(1) + enc.bias))
    return torch.stack(out)


@pytest.mark.parametrize("kernel", [1, 4, 9])
def test_encoder_matches_one_hot_convolution(kernel):
    torch.manual_seed(0)
    enc = CDR3Encoder(8, kernel)
    codes, lens = random_codes(40)
    assert torch.allclose(enc(codes, lens), naive_encoder(enc, codes, lens), atol=1e-5)


@pytest.mark.parametrize("block", [20, 1 << 15])
def test_encoder_without_gradient_matches_one_hot_convolution(block, monkeypatch):
    """Inference sums positions in blocks of rows; blocks that split a length group (20
    positions: one or two rows each) and one block per group give the textbook values."""
    monkeypatch.setattr("biocls.models._cdr3._BLOCK_POSITIONS", block)
    torch.manual_seed(0)
    enc = CDR3Encoder(8, 9)
    codes, lens = random_codes(40)
    with torch.no_grad():
        got, want = enc(codes, lens), naive_encoder(enc, codes, lens)
    assert got.shape == (40, 8)
    assert torch.allclose(got, want, atol=1e-5)


def test_encoder_gradient_matches_dense_max():
    """The arg-max shortcut in training gives the same values and gradients as a dense max."""
    torch.manual_seed(0)
    enc = CDR3Encoder(8, 9)
    codes, lens = random_codes(30)
    out = enc(codes, lens)
    out.pow(2).sum().backward()
    g_fast = [p.grad.clone() for p in enc.parameters()]
    enc.zero_grad()
    ref = naive_encoder(enc, codes, lens)
    ref.pow(2).sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    for a, p in zip(g_fast, enc.parameters(), strict=False):
        assert torch.allclose(a, p.grad, atol=1e-4)


def test_encoder_ignores_sequence_padding():
    torch.manual_seed(0)
    enc = CDR3Encoder(16, 9)
    codes, lens = random_codes(30)
    wide = torch.cat([codes, torch.zeros(30, 7, dtype=torch.long)], 1)
    assert torch.allclose(enc(codes, lens), enc(wide, lens), atol=1e-6)
    # each sequence alone gives the same features as in the batch
    alone = torch.cat([enc(codes[i:i + 1, :lens[i]], lens[i:i + 1]) for i in range(30)])
    assert torch.allclose(enc(codes, lens), alone, atol=1e-6)


def test_blocks_check_arguments():
    with pytest.raises(ValueError, match="activation"):
        CDR3Encoder(activation="tanh")
    with pytest.raises(ValueError, match="n_filters"):
        CDR3Encoder(0)
    with pytest.raises(ValueError, match="bag_pool"):
        PatternPooling(8, bag_pool="median")
    with pytest.raises(ValueError, match="n_patterns"):
        PatternPooling(8, 0)
    with pytest.raises(ValueError, match="pooling"):
        RepertoireNet(pooling="gated")
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        CDR3Encoder()(torch.zeros(3, dtype=torch.long), torch.ones(3))
    with pytest.raises(ValueError, match="lengths"):
        CDR3Encoder(max_length=5)(torch.ones(1, 6, dtype=torch.long), torch.tensor([6]))


@pytest.mark.parametrize("pool_cls,q", [(AttentionPooling, 1), (PatternPooling, 64)])
def test_pooling_shapes_and_weights(pool_cls, q):
    torch.manual_seed(0)
    pool = pool_cls(12)
    x = torch.randn(3, 7, 12)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    out = pool(x, mask)
    assert out.pooled.shape == (3, 12) and out.stats.shape == (3, q)
    assert out.weights.shape == (3, 7) and out.scores.shape == (3, 7)
    assert torch.allclose(out.weights.sum(1), torch.ones(3), atol=1e-5)
    assert (out.weights[1, 4:] == 0).all()


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("use_counts", [False, True])
def test_bag_prediction_independent_of_padding_and_batch(pooling, use_counts):
    torch.manual_seed(0)
    net = RepertoireNet(pooling=pooling, n_filters=8, n_patterns=5, use_counts=use_counts).eval()
    sizes = [5, 11, 3]
    bags = [random_codes(n, seed=i) for i, n in enumerate(sizes)]
    counts = [torch.randint(1, 9, (n,)).float() for n in sizes]
    n_max, l_max = max(sizes) + 2, max(int(c.shape[1]) for c, _ in bags) + 3
    codes = torch.zeros(3, n_max, l_max, dtype=torch.long)
    lens = torch.zeros(3, n_max, dtype=torch.long)
    cnt = torch.zeros(3, n_max)
    for b, ((c, ln), ct) in enumerate(zip(bags, counts, strict=False)):
        codes[b, :len(ln), :c.shape[1]] = c
        lens[b, :len(ln)] = ln
        cnt[b, :len(ln)] = ct
    with torch.no_grad():
        batched = net(codes, lens, cnt)
        alone = torch.stack([net(c[None], ln[None], ct[None])[0]
                             for (c, ln), ct in zip(bags, counts, strict=False)])
        # padding garbage in the masked slots must not matter either
        noisy = codes.clone()
        noisy[0, sizes[0]:, :4] = 5
        noisy_out = net(noisy, lens, cnt)
    assert torch.allclose(batched, alone, atol=1e-5)
    assert torch.allclose(noisy_out, batched, atol=1e-5)
    # a different bag in the batch changes nothing for the others
    other = codes.clone()
    other[2] = codes[1]
    lens2 = lens.clone()
    lens2[2] = lens[1]
    with torch.no_grad():
        assert torch.allclose(net(other, lens2, cnt)[:2], batched[:2], atol=1e-5)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_chunked_inference_equals_full_bag(pooling):
    """The estimator's memory-bounded inference gives the net's exact full-bag answer."""
    torch.manual_seed(0)
    clf = RepertoireClassifier(pooling=pooling, n_filters=8, n_patterns=6, chunk=7,
                               use_counts=True)
    clf.net_ = clf._build().eval()
    codes, lens = random_codes(50)
    counts = torch.randint(1, 5, (50,)).float()
    offs = np.concatenate([[0], np.cumsum(lens.numpy())])
    flat = np.concatenate([codes[i, :ln].numpy() for i, ln in enumerate(lens.tolist())])
    bag = pack_bag(flat.astype(np.uint8), offs, counts.numpy())
    with torch.no_grad():
        ref = clf.net_(codes[None], lens[None], counts[None])[0]
    p = clf.predict_proba([bag])[0]
    assert abs(p - torch.sigmoid(ref).item()) < 1e-5
    prob, idx, w, s = clf.attend(bag, top_n=10)
    assert abs(prob - p) < 1e-9 and len(idx) == 10
    assert np.all(np.diff(s) <= 1e-6)  # ranked by score


POOL_CONFIGS = [(AttentionPooling, {}), (PatternPooling, {"bag_pool": "mean"}),
                (PatternPooling, {"bag_pool": "max"})]


@pytest.mark.parametrize("pool_cls,kw", POOL_CONFIGS, ids=["attention", "patterns-mean",
                                                           "patterns-max"])
@pytest.mark.parametrize("weighted", [False, True])
def test_pool_chunked_equals_forward_on_the_whole_bag(pool_cls, kw, weighted):
    """Each pooling's chunked full-bag path (chunk 7 < 50 instances) gives what its ordinary
    forward gives on the whole bag: pooled vector, bag statistics, weights and scores."""
    torch.manual_seed(0)
    pool = pool_cls(12, **kw).eval()
    if pool_cls is PatternPooling:
        with torch.no_grad():  # every pooled value negative: a max that starts at 0 would show
            pool.values.sub_(3.0)
    x = torch.randn(50, 12) * 2
    lw = torch.log(torch.randint(1, 9, (50,)).float()) if weighted else None
    with torch.no_grad():
        ref = pool(x[None], None, None if lw is None else lw[None])
    got = pool.pool_chunked(x, lw, chunk=7)
    for name in ("pooled", "stats", "weights", "scores"):
        want = getattr(ref, name)[0]
        assert getattr(got, name).shape == want.shape, name
        assert torch.allclose(getattr(got, name), want, atol=1e-5), name
    with pytest.raises(ValueError, match="chunk"):
        pool.pool_chunked(x, lw, chunk=0)
    with pytest.raises(ValueError, match=r"\[N, F\]"):
        pool.pool_chunked(x[None], None, chunk=7)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("use_counts", [False, True])
def test_net_bag_logit_equals_pool_on_the_whole_bag(pooling, use_counts):
    """RepertoireNet.bag_logit (chunked pooling + head) = pool() on the bag as one batch, for the
    logit and for the per-instance weights and scores that ``attend`` ranks by."""
    torch.manual_seed(0)
    net = RepertoireNet(pooling=pooling, n_filters=8, n_patterns=5, use_counts=use_counts).eval()
    codes, lens = random_codes(40)
    counts = torch.randint(1, 6, (40,)).float()
    with torch.no_grad():
        h = net.embed(codes, lens)
        logits, out = net.pool(h[None], None, counts[None])
    logit, w, s = net.bag_logit(h, counts, chunk=6)
    assert logit.shape == () and torch.allclose(logit, logits[0], atol=1e-5)
    assert torch.allclose(w, out.weights[0], atol=1e-5)
    assert torch.allclose(s, out.scores[0], atol=1e-5)
    assert abs(float(w.sum()) - 1.0) < 1e-5


def test_pack_bag_sorts_by_length_and_keeps_order():
    offs = np.array([0, 3, 8, 10])
    codes = np.arange(1, 11, dtype=np.uint8)
    b = pack_bag(codes, offs, np.array([5.0, 6.0, 7.0]))
    assert b.codes.shape == (3, 5)
    assert b.lengths.tolist() == [2, 3, 5] and b.order.tolist() == [2, 0, 1]
    assert b.codes[0].tolist() == [9, 10, 0, 0, 0]
    assert b.codes[2].tolist() == [4, 5, 6, 7, 8]
    assert b.counts.tolist() == [7.0, 5.0, 6.0]
    cut = pack_bag(codes, offs, max_length=3)  # the central residues are kept
    assert cut.codes[cut.order.tolist().index(1)].tolist() == [5, 6, 7]


def test_enriched_patterns_find_the_implanted_motif():
    rng = np.random.default_rng(0)
    motif = [16, 1, 9, 10]  # S A K L
    bags, y = [], []
    for b in range(12):
        lens = rng.integers(10, 16, 200)
        seqs = [rng.integers(1, 21, n) for n in lens]
        if b % 2:
            for s in seqs[:20]:
                s[3:7] = motif
        offs = np.concatenate([[0], np.cumsum(lens)])
        bags.append(pack_bag(np.concatenate(seqs).astype(np.uint8), offs))
        y.append(b % 2)
    pats = enriched_patterns(bags, y, 3)
    assert pats[0][0] == (0, 1, 2, 3) and list(pats[0][1]) == motif
    enc = CDR3Encoder(4, 9)
    assert seed_encoder(enc, pats) == 3
    h = enc(bags[1].codes.long(), bags[1].lengths)
    wit = bags[1].order < 20
    assert h[wit, 0].min() > h[~wit, 0].max()  # the seeded filter fires on the witnesses


def _bags(n_bags: int, seed: int):
    out = []
    for i in range(n_bags):
        codes, lens = random_codes(30, seed=seed * 100 + i)
        offs = np.concatenate([[0], np.cumsum(lens.numpy())])
        flat = np.concatenate([codes[j, :ln].numpy() for j, ln in enumerate(lens.tolist())])
        out.append(pack_bag(flat.astype(np.uint8), offs))
    return out


def test_checkpoint_of_another_run_is_not_resumed(tmp_path):
    """A stale checkpoint (other data or settings) must never be resumed: it could hold weights
    trained on subjects that are now held out."""
    bags, y = _bags(6, seed=0), [0, 1, 0, 1, 0, 1]
    kw = {"n_filters": 4, "n_patterns": 3, "max_epochs": 2, "patience": 2, "seed_filters": 0,
          "device": "cpu", "batch_size": 2}
    first = RepertoireClassifier(**kw).fit(bags, y, checkpoint_dir=tmp_path, progress=False)
    assert first.history_.resumed_from == 0
    same = RepertoireClassifier(**kw).fit(bags, y, checkpoint_dir=tmp_path, progress=False)
    assert same.history_.resumed_from == 2
    other_data = RepertoireClassifier(**kw).fit(_bags(6, seed=1), y, checkpoint_dir=tmp_path,
                                                progress=False)
    assert other_data.history_.resumed_from == 0
    other_lr = RepertoireClassifier(**{**kw, "lr": 1e-4}).fit(_bags(6, seed=1), y,
                                                              checkpoint_dir=tmp_path,
                                                              progress=False)
    assert other_lr.history_.resumed_from == 0


class Killed(Exception):
    pass


def test_killed_fit_resumes_to_identical_predictions(tmp_path, monkeypatch):
    """A repertoire run stopped right after its epoch-2 checkpoint and started again ends exactly
    where an uninterrupted run does (weights, optimiser, lr halving and per-epoch RNG restored)."""
    from biocls.train import Trainer

    bags, y = _bags(6, seed=0), [0, 1, 0, 1, 0, 1]
    kw = {"n_filters": 4, "n_patterns": 3, "max_epochs": 5, "patience": 5, "seed_filters": 2,
          "device": "cpu", "batch_size": 2}
    plain = RepertoireClassifier(**kw).fit(bags, y, progress=False)

    save = Trainer._save

    def save_then_die(path, *args):
        save(path, *args)
        if args[-2] == 2:  # the epoch number just saved
            raise Killed

    monkeypatch.setattr(Trainer, "_save", staticmethod(save_then_die))
    with pytest.raises(Killed):
        RepertoireClassifier(**kw).fit(bags, y, checkpoint_dir=tmp_path, progress=False)
    monkeypatch.undo()
    resumed = RepertoireClassifier(**kw).fit(bags, y, checkpoint_dir=tmp_path, progress=False)
    assert resumed.history_.resumed_from == 2
    assert resumed.history_.train_loss == plain.history_.train_loss
    assert len(plain.history_.train_loss) == 5
    np.testing.assert_array_equal(resumed.predict_proba(bags), plain.predict_proba(bags))


def test_restarts_keep_the_fit_best_on_validation(tmp_path):
    """With restarts, the network kept is the one whose validation loss is lowest, and it is
    really that restart's network (its loss on the validation bags is the recorded minimum)."""
    bags, y = _bags(8, seed=0), [0, 1] * 4
    val, vy = _bags(4, seed=3), [0, 1, 0, 1]
    kw = {"n_filters": 4, "n_patterns": 3, "max_epochs": 3, "patience": 3, "seed_filters": 2,
          "device": "cpu", "batch_size": 2, "restarts": 3, "seed_subsample": 0.5}
    clf = RepertoireClassifier(**kw).fit(bags, y, val_bags=val, val_y=vy,
                                         checkpoint_dir=tmp_path, progress=False)
    scores = clf.restart_scores_
    assert len(scores) == 3 and len(set(np.round(scores, 6))) == 3  # the starts differ
    assert clf.restart_ == int(np.argmin(scores))
    p = np.clip(clf.predict_proba(val), 1e-12, 1 - 1e-12)
    t = np.asarray(vy)
    kept = float(-np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)))
    assert kept == pytest.approx(min(scores), rel=1e-4)
    # restart 0 is the plain single fit; each restart resumes from its own checkpoint folder
    single = RepertoireClassifier(**{**kw, "restarts": 1}).fit(bags, y, val_bags=val, val_y=vy,
                                                               progress=False)
    assert single.restart_scores_[0] == pytest.approx(scores[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["restart_0", "restart_1", "restart_2"]
    again = RepertoireClassifier(**kw).fit(bags, y, val_bags=val, val_y=vy,
                                           checkpoint_dir=tmp_path, progress=False)
    assert again.restart_scores_ == scores and again.history_.resumed_from > 0


def test_restarts_need_validation_bags():
    with pytest.raises(ValueError, match="val_bags"):
        RepertoireClassifier(restarts=2, device="cpu").fit(_bags(4, seed=0), [0, 1, 0, 1],
                                                           progress=False)
