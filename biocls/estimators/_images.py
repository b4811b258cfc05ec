"""The image estimator: a MONAI encoder with factored (or joint) heads, optionally fused with
clinical features, trained by the shared :class:`~biocls.train.Trainer`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from biocls.estimators._base import NetEstimator
from biocls.estimators._cells import CellClassifier
from biocls.evaluate import known_mask
from biocls.models._images import IMAGE_ENCODERS, ImageNet, image_encoder
from biocls.train import Trainer, TrainHistory, resolve_device, run_signature, seed_everything

__all__ = ["ImageClassifier"]

#: ``"plateau"``: halve the learning rate after ``patience // 2`` epochs without improvement
#: (restarting from the best weights); ``"cosine"``: anneal it from ``lr`` to 0 over
#: ``max_epochs`` epochs, step by step (early stopping still keeps the best epoch's weights).
LR_SCHEDULES = ("plateau", "cosine")


class ImageClassifier(NetEstimator):
    """Cell type and (optional) cell state from images ``[N, C, H, W]`` uint8.

    Parameters mirror :class:`biocls.config.ImageModel`. ``clinical`` features given to
    :meth:`fit` are fused late (:class:`biocls.models._images.ImageNet`) and must then be given
    to :meth:`predict_proba` too. ``lr_schedule`` (one of :data:`LR_SCHEDULES`) picks the
    learning-rate schedule: halving on a plateau of the validation score, or a cosine decay to 0
    over ``max_epochs`` (then early stopping only keeps the best epoch).
    """

    KIND: ClassVar[str] = "ImageClassifier"
    TASK: ClassVar[str] = "images"

    def __init__(self, *, encoder: str = "resnet", head: str = "factored",
                 widths: tuple[int, ...] = (16, 32, 64, 128), patch: int = 4, dim: int = 128,
                 depth: int = 4, augment: bool = True, dropout: float = 0.1, lr: float = 0.002,
                 weight_decay: float = 1e-4, batch_size: int = 128, max_epochs: int = 30,
                 patience: int = 6, lr_schedule: str = "plateau", device: str = "auto",
                 seed: int = 0, progress: bool = True) -> None:
        self.encoder = encoder
        self.head = head
        self.widths = widths
        self.patch = patch
        self.dim = dim
        self.depth = depth
        self.augment = augment
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.lr_schedule = lr_schedule
        self.device = device
        self.seed = seed
        self.progress = progress

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, images: np.ndarray, cell_type: Sequence[str],
            cell_state: Sequence[Any] | None = None, clinical: np.ndarray | None = None, *,
            images_val: np.ndarray | None = None, cell_type_val: Sequence[str] | None = None,
            cell_state_val: Sequence[Any] | None = None, clinical_val: np.ndarray | None = None,
            init_encoder: dict[str, torch.Tensor] | None = None,
            checkpoint_dir: str | Path | None = None) -> ImageClassifier:
        """Fit on training images; early-stop on the validation images (whole patients).

        ``init_encoder`` (an encoder's ``state_dict``, e.g. from :meth:`encoder_state` of a
        model trained on another image set) starts the encoder from those weights: transfer.
        """
        from monai.data import CacheDataset, DataLoader

        from biocls.preprocess._images import IMAGE, augment_transforms, eval_transforms

        if self.encoder not in IMAGE_ENCODERS:
            raise ValueError(f"encoder must be one of {IMAGE_ENCODERS}, got {self.encoder!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, "
                             f"got {self.lr_schedule!r}")
        images = _check_images(images)
        self.types_ = sorted(set(map(str, cell_type)))
        known = ([] if cell_state is None
                 else np.asarray(cell_state, dtype=object)[known_mask(cell_state)])
        self.states_ = sorted(set(map(str, known)))
        yt = CellClassifier._codes(cell_type, self.types_)
        ys = CellClassifier._codes(cell_state, self.states_, n=len(yt))
        self.in_channels_, self.size_ = int(images.shape[1]), int(images.shape[-1])
        self.n_clinical_ = 0 if clinical is None else int(clinical.shape[1])
        if self.head == "joint":
            ok = ys >= 0
            self.pairs_ = sorted({(int(t), int(s)) for t, s in zip(yt[ok], ys[ok], strict=True)})
        seed_everything(self.seed)
        self.net_ = self._build()
        self.transferred_ = init_encoder is not None
        if init_encoder is not None:
            self.net_.encoder.load_state_dict(init_encoder)
        device = resolve_device(self.device)
        clin = (torch.zeros((len(yt), 0)) if clinical is None
                else torch.as_tensor(np.asarray(clinical, dtype=np.float32)))
        Yt, Ys = torch.from_numpy(yt), torch.from_numpy(ys)
        tf = augment_transforms() if self.augment else eval_transforms()
        data = [{IMAGE: images[i], "i": i} for i in range(len(images))]
        dataset = CacheDataset(data, tf, cache_rate=1.0, num_workers=0, progress=False)
        pair_of = self._pair_lookup() if self.head == "joint" else None

        def batches(rng: np.random.Generator):
            # the Trainer seeds torch per epoch, so the shuffling is seeded; augmentations are
            # seeded from the epoch's generator
            tf.set_random_state(seed=int(rng.integers(2**31)))
            loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=True,
                                num_workers=0, drop_last=len(dataset) > self.batch_size)
            for batch in loader:
                i = batch["i"]
                yield (batch[IMAGE].to(device), clin[i].to(device), Yt[i].to(device),
                       Ys[i].to(device))

        def loss(net: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
            x, c, t, s = batch
            return self._loss(net(x, c if self.n_clinical_ else None), t, s, pair_of)

        validate = None
        if images_val is not None and len(images_val):
            codes = CellClassifier._codes
            Yv = torch.from_numpy(codes(cell_type_val, self.types_, unknown_ok=True))
            Sv = torch.from_numpy(codes(cell_state_val, self.states_, n=len(Yv),
                                        unknown_ok=True))
            val_images, val_clin = _check_images(images_val), clinical_val

            def validate(net: nn.Module) -> float:
                out = self._forward_all(net, val_images, val_clin, device)
                t, s = Yv.to(device), Sv.to(device)
                wrong = float(((out["cell_type"].argmax(1) != t) & (t >= 0)).sum())
                n = int((t >= 0).sum())
                if "cell_state" in out:
                    ok = s >= 0
                    wrong += float((out["cell_state"].argmax(1)[ok] != s[ok]).sum())
                    n += int(ok.sum())
                # error rate, the loss only breaking ties (as for cells)
                return wrong / max(n, 1) + 1e-3 * float(self._loss(out, t, s, None,
                                                                   validation=True))

        steps = self.max_epochs * max(1, len(dataset) // self.batch_size)

        def cosine(update: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(update, steps) / steps))

        cos = self.lr_schedule == "cosine"
        trainer = Trainer(max_epochs=self.max_epochs, patience=self.patience, lr=self.lr,
                          weight_decay=self.weight_decay, device=device, seed=self.seed,
                          checkpoint_dir=checkpoint_dir, progress=self.progress,
                          desc=f"{self.encoder}/{self.head}" + ("+clinical" if self.n_clinical_
                                                                else ""),
                          plateau=None if cos else max(1, self.patience // 2),
                          schedule=cosine if cos else None)
        start = ([] if init_encoder is None else
                 [np.concatenate([v.detach().cpu().numpy().ravel()[:64]
                                  for v in init_encoder.values()])])
        signature = run_signature(self._training_params(), images, yt, ys, clin.numpy(), *start)
        self.history_ = trainer.fit(self.net_, batches=batches, loss=loss, validate=validate,
                                    signature=signature)
        self.net_.to("cpu")
        return self

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The fitted encoder's weights, to start another model from (transfer)."""
        return {k: v.detach().clone() for k, v in self._check_fitted().encoder.state_dict().items()}

    def _loss(self, out: dict[str, torch.Tensor], t: torch.Tensor, s: torch.Tensor,
              pair_of: torch.Tensor | None, *, validation: bool = False) -> torch.Tensor:
        f = nn.functional
        if pair_of is not None and not validation:
            ok = (t >= 0) & (s >= 0)
            pair = pair_of.to(t.device)[t.clamp_min(0), s.clamp_min(0)]
            return f.cross_entropy(out["pair"][ok], pair[ok]) if ok.any() else out["pair"].sum() * 0
        lt = f.nll_loss(out["cell_type"], t, ignore_index=-1) if "pair" in out else \
            f.cross_entropy(out["cell_type"], t, ignore_index=-1)
        if "cell_state" in out and (s >= 0).any():
            ls = f.nll_loss(out["cell_state"], s, ignore_index=-1) if "pair" in out else \
                f.cross_entropy(out["cell_state"], s, ignore_index=-1)
            return lt + ls
        return lt

    def _pair_lookup(self) -> torch.Tensor:
        table = torch.full((len(self.types_), len(self.states_)), -1, dtype=torch.long)
        for k, (t, s) in enumerate(self.pairs_):
            table[t, s] = k
        return table

    def _build(self) -> ImageNet:
        enc = image_encoder(self.encoder, in_channels=self.in_channels_, size=self.size_,
                            widths=tuple(self.widths), patch=self.patch, dim=self.dim,
                            depth=self.depth, dropout=self.dropout)
        pairs = torch.tensor(self.pairs_) if self.head == "joint" else None
        return ImageNet(enc, n_types=len(self.types_), n_states=len(self.states_),
                        n_clinical=self.n_clinical_, head=self.head, pairs=pairs,
                        dropout=self.dropout)

    # -- prediction ----------------------------------------------------------------------------
    def _forward_all(self, net: nn.Module, images: np.ndarray, clinical: np.ndarray | None,
                     device: torch.device, *, embed: bool = False,
                     batch_size: int = 512) -> Any:
        from biocls.preprocess._images import IMAGE, eval_transforms

        if self.n_clinical_ and clinical is None:
            raise ValueError("this model fuses clinical data; pass clinical features")
        scale = eval_transforms()
        parts: dict[str, list[torch.Tensor]] = {}
        for i in range(0, len(images), batch_size):
            x = torch.as_tensor(scale({IMAGE: images[i:i + batch_size]})[IMAGE]).to(device)
            c = (None if not self.n_clinical_ else
                 torch.as_tensor(np.asarray(clinical[i:i + batch_size], np.float32)).to(device))
            out = {"embedding": net.embed(x, c)} if embed else net(x, c)
            for k, v in out.items():
                parts.setdefault(k, []).append(v)
        return {k: torch.cat(v) for k, v in parts.items()}

    def predict_proba(self, images: np.ndarray,
                      clinical: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per-head class probabilities, columns ordered as ``types_`` / ``states_``."""
        net = self._check_fitted()
        images = self._check_input(images)
        device = resolve_device(self.device)
        net.to(device).eval()
        with torch.no_grad():
            out = self._forward_all(net, images, clinical, device)
        net.to("cpu")
        proba = {}
        for k, v in out.items():
            # the joint head returns log-marginals; exp of log-softmax is softmax either way
            proba[k] = (v.exp() if "pair" in out and k != "pair" else v.softmax(-1)).cpu().numpy()
        return proba

    def predict(self, images: np.ndarray,
                clinical: np.ndarray | None = None) -> dict[str, np.ndarray]:
        proba = self.predict_proba(images, clinical)
        vocab = {"cell_type": self.types_, "cell_state": self.states_}
        return {k: np.asarray(vocab[k])[p.argmax(1)] for k, p in proba.items() if k in vocab}

    def embed(self, images: np.ndarray, clinical: np.ndarray | None = None) -> np.ndarray:
        """The vector the heads read (image embedding, fused with the clinical branch)."""
        net = self._check_fitted()
        images = self._check_input(images)
        device = resolve_device(self.device)
        net.to(device).eval()
        with torch.no_grad():
            out = self._forward_all(net, images, clinical, device, embed=True)
        net.to("cpu")
        return out["embedding"].cpu().numpy()

    def _check_input(self, images: np.ndarray) -> np.ndarray:
        images = _check_images(images)
        if images.shape[1] != self.in_channels_ or images.shape[-1] != self.size_:
            raise ValueError(f"images are {tuple(images.shape[1:])}; the model was fitted on "
                             f"{(self.in_channels_, self.size_, self.size_)}")
        return images

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory: str | Path, *, meta: dict[str, Any] | None = None) -> None:
        learned = {"types": self.types_, "states": self.states_,
                   "in_channels": self.in_channels_, "size": self.size_,
                   "n_clinical": self.n_clinical_, "pairs": getattr(self, "pairs_", None),
                   "transferred": getattr(self, "transferred_", False),
                   "history": self.history_.as_dict()}
        self._write(directory, learned, meta)

    @classmethod
    def load(cls, directory: str | Path) -> ImageClassifier:
        state, info, meta = cls._read(directory)
        params = {k: v for k, v in info["params"].items() if k != "progress"}
        params["widths"] = tuple(params["widths"])
        self = cls(**params, progress=False)
        self.types_, self.states_ = info["types"], info["states"]
        self.in_channels_, self.size_ = info["in_channels"], info["size"]
        self.n_clinical_ = info["n_clinical"]
        self.transferred_ = bool(info.get("transferred", False))
        if info.get("pairs") is not None:
            self.pairs_ = [tuple(p) for p in info["pairs"]]
        self.history_ = TrainHistory(**info["history"])
        self.meta_ = meta
        self.net_ = self._build()
        self.net_.load_state_dict(state)
        self.net_.eval()
        return self


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} "
                         f"{images.shape}")
    return images
