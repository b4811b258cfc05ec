"""CellClassifier / CellNet, MONAI-style: the shape of every configuration, bad arguments raise,
save/load round trip, feature checks, what the joint head can and cannot predict, unknown states.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from biocls.estimators import CellClassifier
from biocls.models import FactoredHeads, JointHead, MixerEncoder, MLPEncoder

TYPES, STATES = ["a", "b", "c"], ["x", "y"]
N, G = 60, 12



def data(seed: int = 0, *, n: int = N, pairs=None):
    """Separable toy data: type and state each shift their own genes."""
    rng = np.random.default_rng(seed)
    pairs = pairs or [(t, s) for t in TYPES for s in STATES]
    idx = rng.integers(0, len(pairs), n)
    t = np.array([pairs[i][0] for i in idx], dtype=object)
    s = np.array([pairs[i][1] for i in idx], dtype=object)
    X = rng.normal(size=(n, G)).astype(np.float32)
    for k, name in enumerate(TYPES):
        X[t == name, k] += 4.0
    for k, name in enumerate(STATES):
        X[s == name, 6 + k] += 4.0
    return X, t, s


def model(**kw) -> CellClassifier:
    base = {"hidden": [8], "max_epochs": 2, "patience": 2, "batch_size": 16, "n_modules": 3,
            "mixer_dim": 8, "mixer_depth": 1, "progress": False, "device": "cpu", "seed": 0,
            "path": "deep"}
    return CellClassifier(**{**base, **kw})


CONFIGS = [
    dict(encoder=e, head=h, with_state=w, state_input=si)
    for e, h, w, si in itertools.product(["mlp", "mixer"], ["factored", "joint"], [True, False],
                                         ["centred", "raw"])
    if not (h == "joint" and not w)  # the joint head needs states: tested as an error below
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
def test_output_shapes(cfg: dict) -> None:
    X, t, s = data()
    m = model(encoder=cfg["encoder"], head=cfg["head"], state_input=cfg["state_input"])
    m.fit(X, t, s if cfg["with_state"] else None)
    proba = m.predict_proba(X[:7])
    assert proba["cell_type"].shape == (7, len(TYPES))
    np.testing.assert_allclose(proba["cell_type"].sum(1), 1.0, atol=1e-5)
    if cfg["with_state"]:
        assert proba["cell_state"].shape == (7, len(STATES))
        np.testing.assert_allclose(proba["cell_state"].sum(1), 1.0, atol=1e-5)
    else:
        assert set(proba) == {"cell_type"}
    out = m.net_(torch.from_numpy(X[:5]))  # the raw net: [B, G] → dict of [B, C]
    assert out["cell_type"].shape == (5, len(TYPES))
    if cfg["head"] == "joint":
        assert out["pair"].shape == (5, len(m.pairs_))
    # the type-centred state pathway is on exactly when asked for and meaningful
    centred = cfg["head"] == "factored" and cfg["with_state"] and cfg["state_input"] == "centred"
    assert (m.net_.type_means is not None) == centred
    if centred:
        assert m.net_.type_means.shape == (len(TYPES), G)
    pred = m.predict(X[:4])
    assert pred["cell_type"].shape == (4,) and set(pred["cell_type"]) <= set(TYPES)


def test_blocks_shapes() -> None:
    x = torch.randn(4, G)
    assert MLPEncoder(G, [16, 8])(x).shape == (4, 8)
    mods = [i % 3 for i in range(G)]
    assert MixerEncoder(mods, dim=8, depth=2)(x).shape == (4, 8)
    heads = FactoredHeads(8, 3, 2)(torch.randn(4, 8))
    assert heads["cell_type"].shape == (4, 3) and heads["cell_state"].shape == (4, 2)
    assert set(FactoredHeads(8, 3)(torch.randn(4, 8))) == {"cell_type"}
    joint = JointHead(8, torch.tensor([[0, 0], [1, 1], [2, 0]]), 3, 2)(torch.randn(4, 8))
    assert joint["pair"].shape == (4, 3)
    assert joint["cell_type"].shape == (4, 3) and joint["cell_state"].shape == (4, 2)
    # marginals are log-probabilities that sum to one
    np.testing.assert_allclose(joint["cell_type"].detach().exp().sum(1).numpy(), 1.0, atol=1e-5)


@pytest.mark.parametrize("kw,match", [
    ({"encoder": "transformer"}, "encoder"),
    ({"head": "hierarchical"}, "head"),
    ({"state_input": "whitened"}, "state_input"),
    ({"state_mode": "fuzzy"}, "state_mode"),
    ({"partial_loss": "guess", "state_mode": "multilabel"}, "partial_loss"),
    ({"dropout": -0.1}, "dropout"),
    ({"dropout": 1.0}, "dropout"),
    ({"dropout": 1.5}, "dropout"),
    ({"encoder": "mixer", "dropout": -0.1}, "dropout"),
    ({"encoder": "mixer", "dropout": 1.5}, "dropout"),
    ({"encoder": "mixer", "dropout": 1.0}, "dropout"),
    ({"hidden": []}, "MLPEncoder"),
])
def test_bad_arguments_raise(kw: dict, match: str) -> None:
    X, t, s = data()
    with pytest.raises(ValueError, match=match):
        model(**kw).fit(X, t, s)


def test_joint_head_without_states_raises() -> None:
    X, t, _ = data()
    with pytest.raises(ValueError, match="joint head needs cell_state"):
        model(head="joint").fit(X, t, None)


def test_block_arguments_raise() -> None:
    with pytest.raises(ValueError):
        FactoredHeads(8, 1)
    with pytest.raises(ValueError):
        JointHead(8, torch.tensor([[0, 0]]), 2, 2)  # fewer than two pairs
    with pytest.raises(ValueError):
        MixerEncoder([0, 2, 2])  # module 1 has no gene
    with pytest.raises(ValueError):
        MLPEncoder(0, [4])


@pytest.mark.parametrize("kw", [{}, {"encoder": "mixer"}, {"head": "joint"},
                                {"state_input": "raw"}, {"input_dropout": 0.3}])
def test_save_load_round_trip(kw: dict, tmp_path: Path) -> None:
    X, t, s = data()
    m = model(**kw).fit(X, t, s)
    m.save(tmp_path / "m", meta={"experiment": "e", "keys": {"patient": "donor"}})
    back = CellClassifier.load(tmp_path / "m")
    assert back.types_ == m.types_ and back.states_ == m.states_
    assert back.meta_ == {"experiment": "e", "keys": {"patient": "donor"}}
    assert back.get_params() == {**m.get_params(), "hidden": list(m.hidden), "progress": False}
    a, b = m.predict_proba(X), back.predict_proba(X)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_predict_refuses_wrong_feature_count() -> None:
    X, t, s = data()
    m = model().fit(X, t, s)
    with pytest.raises(ValueError, match="features"):
        m.predict_proba(X[:, :-1])
    with pytest.raises(NotFittedError, match="CellClassifier is not fitted"):
        model().predict_proba(X)


@pytest.fixture(scope="module")
def held_out_pair():
    """Training data without the pair (b, y); new cells that are all (b, y)."""
    train_pairs = [(t, s) for t in TYPES for s in STATES if (t, s) != ("b", "y")]
    X, t, s = data(0, n=240, pairs=train_pairs)
    Xn, _, _ = data(1, n=60, pairs=[("b", "y")])
    # no dropout of either kind: on 12 genes, dropping half of them hides the one that marks
    # each type; this is about what the heads can name, not about regularisation
    common = {"max_epochs": 30, "patience": 30, "hidden": [16], "lr": 1e-2, "dropout": 0.0,
              "input_dropout": 0.0}
    return X, t, s, Xn, common


def test_held_out_pair_factored_can_predict_it(held_out_pair) -> None:
    X, t, s, Xn, common = held_out_pair
    fac = model(head="factored", **common).fit(X, t, s)
    pf = fac.predict(Xn)
    assert np.mean((pf["cell_type"] == "b") & (pf["cell_state"] == "y")) > 0.5


def test_held_out_pair_joint_head_has_no_output_for_it(held_out_pair) -> None:
    X, t, s, Xn, common = held_out_pair
    joint = model(head="joint", **common).fit(X, t, s)
    trained = {(joint.types_[i], joint.states_[j]) for i, j in joint.pairs_}
    assert ("b", "y") not in trained and len(trained) == 5
    assert joint.net_(torch.from_numpy(Xn))["pair"].shape == (len(Xn), 5)


def test_held_out_pair_joint_head_never_predicts_it(held_out_pair) -> None:
    X, t, s, Xn, common = held_out_pair
    pj = model(head="joint", **common).fit(X, t, s).predict(Xn)
    assert not np.any((pj["cell_type"] == "b") & (pj["cell_state"] == "y"))


def test_joint_head_predicts_only_trained_pairs_even_when_marginals_disagree() -> None:
    types, states = ["a", "b", "c"], ["x", "y", "z"]
    pairs = [(ty, st) for ty in types for st in states if (ty, st) != ("b", "y")]
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(pairs), 90)
    X = rng.normal(size=(90, G)).astype(np.float32)
    m = model(head="joint").fit(X, [pairs[i][0] for i in idx], [pairs[i][1] for i in idx])
    names = [(m.types_[i], m.states_[j]) for i, j in m.pairs_]
    # a pair distribution whose type marginal peaks at b and state marginal at y
    want = {("b", "x"): 0.2, ("b", "z"): 0.2, ("a", "y"): 0.3, ("c", "y"): 0.3}
    p = torch.tensor([want.get(n, 1e-6) for n in names]).log()
    with torch.no_grad():
        m.net_.head.head.weight.zero_()
        m.net_.head.head.bias.copy_(p)
    pred = m.predict(X[:5])
    got = set(zip(pred["cell_type"], pred["cell_state"], strict=True))
    assert got <= set(names), got


def test_unknown_states_are_ignored_not_a_class() -> None:
    X, t, s = data()
    s = s.copy()
    s[::3] = None
    s[1::3] = np.nan
    m = model().fit(X, t, s)
    assert m.states_ == STATES  # neither None nor NaN became a class
    codes = m._codes(list(s), m.states_, n=len(s))
    assert (codes[::3] == -1).all() and (codes[1::3] == -1).all() and (codes[2::3] >= 0).all()
    # a batch whose states are all unknown contributes nothing to the state head's gradient
    net = m.net_.train()
    out = net(torch.from_numpy(X))
    loss = m._loss(out, torch.from_numpy(m._codes(list(t), m.types_)),
                   torch.full((N,), -1, dtype=torch.long), None)
    net.zero_grad()
    loss.backward()
    grad = net.head.state_head.weight.grad
    assert grad is None or torch.count_nonzero(grad) == 0
    # …and the loss equals the type loss alone
    type_only = torch.nn.functional.cross_entropy(out["cell_type"].detach(),
                                                  torch.from_numpy(m._codes(list(t), m.types_)))
    assert float(loss.detach()) == pytest.approx(float(type_only), rel=1e-5)


def test_all_states_unknown_means_no_state_head() -> None:
    X, t, _ = data()
    m = model().fit(X, t, [None] * N)
    assert m.states_ == [] and set(m.predict_proba(X)) == {"cell_type"}


def test_centred_fast_path_equals_a_second_encoder_pass() -> None:
    """The MLP's shared-stem shortcut must give what encoding ``x - p @ type_means`` gives."""
    X, t, s = data()
    m = model(hidden=[16, 8], input_dropout=0.2).fit(X, t, s)
    net = m.net_.eval()
    x = torch.from_numpy(X)
    with torch.no_grad():
        fast = net(x)
        p = fast["cell_type"].softmax(-1)
        slow = net.head.state_logits(net.encoder(x - p @ net.type_means))
    assert net.type_means is not None and net.type_means.shape == (len(m.types_), G)
    torch.testing.assert_close(fast["cell_state"], slow, rtol=1e-4, atol=1e-5)


# -- what feeds the heads: deep, linear, ensemble ----------------------------------------------

@pytest.mark.parametrize("encoder", ["mlp", "mixer"])
def test_ensemble_gives_both_heads_from_both_paths(encoder: str, tmp_path: Path) -> None:
    X, t, s = data(0, n=90)
    Xv, tv, sv = data(1, n=30)
    m = model(path="ensemble", encoder=encoder).fit(X, t, s, X_val=Xv, cell_type_val=tv,
                                                     cell_state_val=sv)
    proba = m.predict_proba(X[:5])
    assert proba["cell_type"].shape == (5, len(TYPES))
    assert proba["cell_state"].shape == (5, len(STATES))
    np.testing.assert_allclose(proba["cell_state"].sum(1), 1.0, atol=1e-5)
    assert m.net_.linear.encoder is None and m.net_.deep.encoder is not None
    assert m.net_.linear.head.type_head.in_features == G  # straight from the genes
    m.save(tmp_path / "m")
    back = CellClassifier.load(tmp_path / "m")
    assert back.linear_weight_ == m.linear_weight_ and back.chosen_ == m.chosen_
    for k, v in m.predict_proba(X).items():
        np.testing.assert_array_equal(back.predict_proba(X)[k], v)


def test_linear_state_head_reads_the_type_centred_profile() -> None:
    """Linear: state logits = W_s(x − p·μ) + b_s, with p from the type head."""
    X, t, s = data()
    m = model(path="linear").fit(X, t, s)
    net = m.net_.eval()
    x = torch.from_numpy(X)
    with torch.no_grad():
        out = net(x)
        shifted = x - out["cell_type"].softmax(-1) @ net.type_means
        expected = net.head.state_head(shifted)
    torch.testing.assert_close(out["cell_state"], expected, rtol=1e-4, atol=1e-5)


def test_linear_only_reaches_logistic_regression_on_a_separable_case() -> None:
    """The linear path at C=1 is scikit-learn's LogisticRegression(C=1) on the same cells."""
    from sklearn.linear_model import LogisticRegression

    X, t, s = data(0, n=400)
    X[:, :6] *= 0.3  # overlap the type clusters, so that errors are possible
    Xt, tt, _ = data(1, n=400)
    Xt[:, :6] *= 0.3
    m = CellClassifier(path="linear", linear_c=1.0, linear_penalty="l2", progress=False,
                       device="cpu").fit(X, t)
    lr = LogisticRegression(C=1.0, max_iter=5000).fit(X, t.astype(str))
    ours, theirs = m.predict(Xt)["cell_type"], lr.predict(Xt)
    assert (ours == theirs).mean() >= 0.98
    assert (ours == tt).mean() >= (theirs == tt).mean() - 0.01
    # same optimum: same class probabilities, not only the same argmax
    np.testing.assert_allclose(m.predict_proba(Xt)["cell_type"], lr.predict_proba(Xt), atol=0.02)
    # the default linear path (L1, C=0.05) is no less accurate on this case either
    default = CellClassifier(path="linear", progress=False, device="cpu").fit(X, t)
    assert default.linear_penalty_ == {"cell_type": "l1"}  # no validation cells: auto keeps L1
    assert (default.predict(Xt)["cell_type"] == tt).mean() >= (theirs == tt).mean() - 0.01


def test_l1_linear_path_is_scikit_learns_l1_logistic_regression() -> None:
    """``linear_penalty="l1"`` reaches the optimum of LogisticRegression(penalty="l1", C): the
    same objective value and the same zero weights (the FISTA fit is not an approximation)."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    n, g, k = 600, 120, 4
    X = rng.standard_normal((n, g)).astype(np.float32)
    W = np.zeros((k, g))
    W[:, :8] = 2 * rng.standard_normal((k, 8))  # 8 marker genes, 112 noise genes
    t = np.array([f"T{i}" for i in (X @ W.T + rng.gumbel(size=(n, k))).argmax(1)])
    c = 0.05
    m = CellClassifier(path="linear", linear_c=c, linear_penalty="l1", progress=False,
                       device="cpu").fit(X, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # penalty= is deprecated in newer scikit-learn
        lr = LogisticRegression(C=c, penalty="l1", solver="saga", tol=1e-6,
                                max_iter=5000).fit(X, t)
    w = m.net_.head.type_head.weight.detach().numpy().astype(np.float64)
    b = m.net_.head.type_head.bias.detach().numpy().astype(np.float64)

    def objective(coef: np.ndarray, bias: np.ndarray) -> float:
        z = X @ coef.T + bias
        z -= z.max(1, keepdims=True)
        y = np.searchsorted(m.types_, t)
        ce = -(z[np.arange(n), y] - np.log(np.exp(z).sum(1))).mean()
        return float(ce + np.abs(coef).sum() / (c * n))

    assert objective(w, b) == pytest.approx(objective(lr.coef_, lr.intercept_), abs=1e-3)
    assert objective(w, b) <= objective(lr.coef_, lr.intercept_) + 1e-5
    # most noise genes are exactly 0 for every class; most markers are not
    assert (np.abs(w[:, 8:]).sum(0) == 0).mean() > 0.8
    assert (np.abs(w[:, :8]).sum(0) > 0).all()
    assert (m.predict(X)["cell_type"] == lr.predict(X)).mean() >= 0.99
    # with L2 nothing is exactly 0
    l2 = CellClassifier(path="linear", linear_c=c, linear_penalty="l2", progress=False,
                        device="cpu").fit(X, t)
    assert (l2.net_.head.type_head.weight.detach().numpy() != 0).all()
    # what the report counts: genes with a non-zero weight for some type
    from biocls.tasks.cells import linear_genes_used

    assert linear_genes_used(m) == {"cell_type": int((np.abs(w).sum(0) > 0).sum())}
    assert linear_genes_used(l2) == {"cell_type": g}


def test_linear_penalty_is_checked() -> None:
    X, t, s = data()
    with pytest.raises(ValueError, match="linear_penalty"):
        model(path="linear", linear_penalty="l0").fit(X, t, s)


def test_default_c_scales_with_the_training_cells() -> None:
    """scikit-learn's C is a penalty per cell: with one fixed C a small cohort is penalised far
    harder than a large one. The default (None) must be C = LINEAR_C_CELLS / n exactly, and a
    non-positive C an error rather than an unpenalised or sign-flipped fit."""
    from biocls.estimators._cells import LINEAR_C_CELLS

    for n in (60, 240):
        X, t, s = data(0, n=n)
        auto = model(path="linear").fit(X, t, s)
        assert auto.linear_c_["cell_type"] == pytest.approx(LINEAR_C_CELLS / n)
        fixed = model(path="linear", linear_c=LINEAR_C_CELLS / n).fit(X, t, s)
        np.testing.assert_allclose(auto.net_.head.type_head.weight.detach().numpy(),
                                   fixed.net_.head.type_head.weight.detach().numpy())
    with pytest.raises(ValueError, match="linear_c"):
        model(path="linear", linear_c=0.0).fit(X, t, s)


def _penalty_case(dense: bool, n: int, seed: int = 0):
    """Types from many weak genes (``dense``) or from 4 strong markers among 196 noise genes."""
    rng = np.random.default_rng(seed)
    g, k = 200, 3
    W = np.zeros((k, g))
    if dense:
        W[:] = 0.25 * rng.standard_normal((k, g))
    else:
        W[:, :4] = 3 * rng.standard_normal((k, 4))
    draw = np.random.default_rng(seed + 100)
    X = draw.standard_normal((n, g)).astype(np.float32)
    t = np.array([f"T{i}" for i in (X @ W.T + draw.gumbel(size=(n, k))).argmax(1)], dtype=object)
    return X, t


@pytest.mark.parametrize("dense", [True, False])
def test_auto_penalty_keeps_l1_unless_l2_errs_less_on_the_validation_cells(dense: bool) -> None:
    """``linear_penalty="auto"`` scores both candidates on the validation cells and keeps L1
    unless L2 errs less by the margin: many weak genes call for L2, a few markers for L1."""
    from biocls.estimators._cells import MIX_MARGIN

    cells, types = _penalty_case(dense, n=420)
    X, t, Xv, tv = cells[:120], types[:120], cells[120:], types[120:]
    m = model(path="linear").fit(X, t, X_val=Xv, cell_type_val=tv)
    errors = m.linear_errors_["cell_type"]
    assert set(errors) == {"l1", "l2"}
    # each recorded error is that candidate's, fitted on the training cells alone
    for pen, c in (("l1", None), ("l2", 1.0)):
        alone = model(path="linear", linear_penalty=pen, linear_c=c).fit(X, t)
        wrong = (alone.predict(Xv)["cell_type"] != tv).mean()
        assert errors[pen] == pytest.approx(wrong, abs=1e-5)
    want = "l1" if errors["l1"] <= errors["l2"] + MIX_MARGIN else "l2"
    assert m.linear_penalty_ == {"cell_type": want}
    assert want == ("l2" if dense else "l1")
    assert m.linear_c_["cell_type"] == pytest.approx(1.0 if dense else 100 / 420)  # refitted


def test_the_linear_refit_adds_the_validation_cells_only_after_they_chose() -> None:
    """With ``linear_refit`` the choices (penalty, mix weight) and their recorded errors are
    those of the fits on training cells only; only then is the linear net refitted, on training
    + validation cells, with C per cell following the larger n."""
    X, t, s = data(0, n=120)
    Xv, tv, sv = data(1, n=40)
    kw = dict(path="ensemble", max_epochs=3)
    no = model(linear_refit=False, **kw).fit(X, t, s, X_val=Xv, cell_type_val=tv,
                                             cell_state_val=sv)
    yes = model(**kw).fit(X, t, s, X_val=Xv, cell_type_val=tv, cell_state_val=sv)
    assert yes.mix_errors_ == no.mix_errors_ and yes.linear_weight_ == no.linear_weight_
    assert yes.linear_errors_ == no.linear_errors_
    assert yes.linear_penalty_ == no.linear_penalty_
    assert getattr(no, "linear_refitted_", False) is False and yes.linear_refitted_ is True
    for key, value in yes.net_.deep.state_dict().items():  # the deep net is not refitted
        torch.testing.assert_close(value, no.net_.deep.state_dict()[key])
    # the refitted type head is the one fitted on all 160 cells with the chosen penalty
    pen = yes.linear_penalty_["cell_type"]
    both = model(path="linear", linear_penalty=pen).fit(np.concatenate([X, Xv]),
                                                         np.concatenate([t, tv]))
    assert yes.linear_c_["cell_type"] == pytest.approx(both.linear_c_["cell_type"])
    if pen == "l1":
        assert yes.linear_c_["cell_type"] == pytest.approx(100 / 160)
    torch.testing.assert_close(yes.net_.linear.head.type_head.weight,
                               both.net_.head.type_head.weight, rtol=1e-4, atol=1e-5)
    assert not torch.equal(yes.net_.linear.head.type_head.weight,
                           no.net_.linear.head.type_head.weight)


def test_ensemble_weight_per_head_is_the_one_with_fewest_validation_errors() -> None:
    from biocls.estimators._cells import MIX_WEIGHTS, _mix_error, choose_weight

    X, t, s = data(0, n=120)
    Xv, tv, sv = data(1, n=40)
    # without the refit, the members here are the ones the validation cells scored
    m = model(path="ensemble", max_epochs=3, linear_refit=False).fit(
        X, t, s, X_val=Xv, cell_type_val=tv, cell_state_val=sv)
    for head, labels, vocab in (("cell_type", tv, m.types_), ("cell_state", sv, m.states_)):
        errors = m.mix_errors_[head]
        assert set(errors) == {str(w) for w in MIX_WEIGHTS}
        w = m.linear_weight_[head]
        assert w == choose_weight({float(k): v for k, v in errors.items()})
        # recomputed from the members themselves, on the validation cells only
        with torch.no_grad():
            pa = m.net_.deep(torch.from_numpy(Xv))[head].softmax(-1).numpy()
            pb = m.net_.linear(torch.from_numpy(Xv))[head].softmax(-1).numpy()
        assert _mix_error(pa, pb, w, labels, vocab) == pytest.approx(errors[str(w)], abs=1e-5)
        expected = (1 - w) * pa + w * pb
        np.testing.assert_allclose(m.predict_proba(Xv)[head], expected, rtol=1e-4, atol=1e-6)


def test_choose_weight_keeps_the_linear_path_unless_deep_earns_a_margin() -> None:
    from biocls.estimators._cells import choose_weight

    assert choose_weight({1.0: 0.20, 0.5: 0.195, 0.0: 0.19}, margin=0.01) == 1.0  # within noise
    assert choose_weight({1.0: 0.20, 0.5: 0.18, 0.0: 0.185}, margin=0.01) == 0.5
    assert choose_weight({1.0: 0.20, 0.5: 0.15, 0.0: 0.10}, margin=0.01) == 0.0
    assert choose_weight({1.0: 0.20, 0.5: 0.15, 0.0: 0.10}, margin=0.0) == 0.0
    assert choose_weight({1.0: 0.10, 0.5: 0.15, 0.0: 0.05}, margin=0.0) == 0.0


def test_mix_error_counts_the_annotated_cells_the_mixture_gets_wrong() -> None:
    from biocls.estimators._cells import _mix_error

    deep = np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8]])    # right, wrong, right
    linear = np.array([[0.6, 0.4], [0.1, 0.9], [0.6, 0.4]])  # right, right, wrong
    labels, vocab = np.array(["a", "b", "b"], dtype=object), ["a", "b"]
    assert _mix_error(deep, linear, 0.0, labels, vocab) == pytest.approx(1 / 3)
    assert _mix_error(deep, linear, 1.0, labels, vocab) == pytest.approx(1 / 3)
    assert _mix_error(deep, linear, 0.5, labels, vocab) == pytest.approx(1 / 3)
    unknown = np.array(["a", None, "b"], dtype=object)  # unannotated cells are not counted
    assert _mix_error(deep, linear, 0.0, unknown, vocab) == 0.0


def test_ensemble_without_validation_cells_mixes_evenly() -> None:
    X, t, s = data()
    m = model(path="ensemble").fit(X, t, s)
    assert m.linear_weight_ == {"cell_type": 0.5, "cell_state": 0.5}
    assert m.mix_errors_ is None


def test_multilabel_states_and_joint_head_stay_deep() -> None:
    X, t, s = data()
    joint = model(path="ensemble", head="joint").fit(X, t, s)
    assert joint.chosen_ == "deep" and isinstance(joint.net_.head, JointHead)
    with pytest.raises(ValueError, match="partial-label"):
        labels = np.stack([(s == "x"), (s == "y")], 1).astype(float)
        model(path="linear", state_mode="multilabel").fit(X, t, labels)


def test_a_model_saved_before_paths_existed_loads_as_deep(tmp_path: Path) -> None:
    import json

    X, t, s = data()
    m = model(path="deep").fit(X, t, s)
    m.save(tmp_path / "m")
    info_path = tmp_path / "m" / "model.json"
    info = json.loads(info_path.read_text())
    for key in ("chosen", "linear_weight", "mix_errors"):
        info.pop(key)
    for key in ("path", "linear_c"):
        info["params"].pop(key)
    info_path.write_text(json.dumps(info))
    back = CellClassifier.load(tmp_path / "m")
    assert back.path == "deep" and back.chosen_ == "deep"
    np.testing.assert_array_equal(back.predict_proba(X)["cell_type"],
                                  m.predict_proba(X)["cell_type"])


def test_type_means_leave_out_unlabelled_rows_and_empty_types() -> None:
    """The state head reads x minus its type's mean: a mean polluted by unlabelled cells, or NaN
    for a type with no labelled cell, would shift every state call of that type."""
    from biocls.estimators._cells import _class_means

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    y = rng.integers(0, 2, size=60)
    y[:10] = -1
    X[:10] += 100.0  # unlabelled rows far away: any leak moves the means
    means = _class_means(X, y, 3)
    for k in (0, 1):
        np.testing.assert_allclose(means[k], X[y == k].mean(0), rtol=1e-5, atol=1e-5)
    assert np.all(means[2] == 0.0)


def test_byte_dropout_drops_the_rounded_rate_and_keeps_the_mean() -> None:
    """The MLP's cheap CPU dropout: drops ``round(256·p)/256`` of the values, scales the rest so
    the mean is unchanged, lets gradients through the kept values only, is the identity in
    eval mode, and repeats under the same seed."""
    from biocls.models._encoders import ByteDropout

    drop = ByteDropout(0.2)
    x = torch.ones(1000, 500)
    torch.manual_seed(0)
    y = drop(x)
    assert float((y == 0).float().mean()) == pytest.approx(51 / 256, abs=0.003)
    assert float(y.mean()) == pytest.approx(1.0, abs=0.005)
    assert torch.unique(y).tolist() == pytest.approx([0.0, 256 / 205])
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)
    # no two rows share a mask (the bytes of one 64-bit draw go to different elements)
    assert len({tuple(r) for r in (y[:50] == 0).int().tolist()}) == 50
    v = torch.randn(64, 32, requires_grad=True)
    out = drop(v)
    out.sum().backward()
    assert torch.equal(v.grad != 0, out != 0)
    drop.eval()
    assert drop(x) is x
    assert ByteDropout(0.0)(x) is x
    with pytest.raises(ValueError, match="dropout"):
        ByteDropout(1.0)


def test_default_batch_grows_only_where_an_epoch_keeps_128_updates() -> None:
    """``batch_size=None`` trains small cohorts with 256 cells per update (larger batches cost
    accuracy there) and only large ones, with at least 128 updates per epoch left, with more."""
    from biocls.estimators._cells import batch_size_for

    assert [batch_size_for(n) for n in (10, 5_000, 65_535, 65_536, 131_071, 131_072, 10**7)] \
        == [256, 256, 256, 512, 512, 1024, 1024]
    X, t, s = data(0, n=120)
    assert model(batch_size=None).fit(X, t, s).batch_size_ == 256
    assert model(batch_size=32).fit(X, t, s).batch_size_ == 32
