"""Read cell images (a manifest TSV of PNG/TIFF files, or a MedMNIST-style ``.npz``) and check
them before any work is done: a bad file is a one-line error naming it, and nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from biocls._errors import BioclsError
from biocls._progress import progress_bar

__all__ = ["NPZ_SPLITS", "ImageSet", "read_image_manifest", "read_image_npz"]

#: the arrays of a MedMNIST-style file: ``<split>_images`` and ``<split>_labels``
NPZ_SPLITS = ("train", "val", "test")


@dataclass
class ImageSet:
    """Images in memory with what is known of each.

    ``images`` is uint8 ``[N, C, size, size]``. ``obs`` (one row per image, index = image ID)
    holds canonical columns: ``biocls_patient``, ``biocls_cell_type``, optionally
    ``biocls_cell_state``, ``biocls_image`` (the manifest's path, or ``<split>/<index>`` of an
    ``.npz``) and, for an ``.npz``, ``biocls_split``. ``clinical`` holds the raw clinical columns
    (``keys.clinical``) in the same row order, or ``None``.
    """

    images: np.ndarray
    obs: pd.DataFrame
    clinical: pd.DataFrame | None
    source: str
    #: encoder weights to start from (``biocls pretrain``'s output), when the experiment transfers
    pretrained: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, mask: np.ndarray) -> ImageSet:
        clin = None if self.clinical is None else self.clinical[mask]
        return ImageSet(self.images[mask], self.obs[mask], clin, self.source, self.pretrained)


def read_image_manifest(path: str | Path, *, image: str, patient: str | None,
                        cell_type: str | None, cell_state: str | None = None,
                        clinical: Sequence[str] = (), size: int = 28,
                        pseudo_patients: int | None = None, seed: int = 0,
                        progress: bool = True) -> ImageSet:
    """Read a manifest and its images. Labels are required unless ``cell_type`` is ``None``
    (``biocls predict`` on new images); ``clinical`` columns must exist but may have gaps."""
    from biocls.preprocess._images import read_image

    path = Path(path)
    if not path.exists():
        raise BioclsError("manifest not found", where=str(path),
                          fix="check `manifest` in the config")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as e:
        raise BioclsError(f"not a readable TSV ({type(e).__name__})", where=str(path),
                          fix="write one row per image, tab-separated, with a header") from None
    roles = {"image": image, "patient": patient, "cell_type": cell_type,
             "cell_state": cell_state}
    for role, col in roles.items():
        if col is not None and col not in table.columns:
            have = ", ".join(table.columns[:12])
            raise BioclsError(f"no column '{col}' (keys.{role}); it has: {have}",
                              where=str(path), fix=f"set keys.{role} to the right column")
    missing = [c for c in clinical if c not in table.columns]
    if missing:
        raise BioclsError(f"no clinical column '{missing[0]}' (keys.clinical)", where=str(path),
                          fix="list existing manifest columns under keys.clinical")
    if table.empty:
        raise BioclsError("the manifest lists no images", where=str(path),
                          fix="add one row per image")
    for role in ("image", "cell_type", "patient"):
        col = roles[role]
        if col is None:
            continue
        blank = table[col].str.strip() == ""
        if blank.any():
            raise BioclsError(f"column '{col}' (keys.{role}) is empty on line "
                              f"{int(np.flatnonzero(blank)[0]) + 2}", where=str(path),
                              fix=f"give every image a {role}")
    folder = path.parent
    files = [folder / p for p in table[image]]
    absent = [f for f in files if not f.is_file()]
    if absent:
        raise BioclsError(f"{len(absent)} image files are missing, e.g. {absent[0]}",
                          where=f"{path}: {image}",
                          fix="image paths are relative to the manifest's folder")
    arrays = []
    for f in progress_bar(files, desc="read images", unit="image", disable=not progress,
                          leave=False):
        try:
            arr = read_image(f, size)
        except Exception as e:
            raise BioclsError(f"unreadable image ({type(e).__name__})", where=str(f),
                              fix="use 2-D PNG or TIFF files") from None
        if arr.ndim != 3 or arr.shape[0] not in (1, 3):
            raise BioclsError(f"image has shape {arr.shape}: expected 2-D with 1 or 3 channels",
                              where=str(f), fix="save it as a grey or RGB 2-D image")
        if arrays and arr.shape[0] != arrays[0].shape[0]:
            raise BioclsError(f"{arr.shape[0]} channels, but {files[0].name} has "
                              f"{arrays[0].shape[0]}", where=str(f),
                              fix="use the same channel count (grey or RGB) for every image")
        arrays.append(arr)
    obs = pd.DataFrame(index=pd.Index([f"img{i:06d}" for i in range(len(table))], dtype=str))
    obs["biocls_image"] = table[image].to_numpy()
    _labels(obs, table, roles, pseudo_patients, seed, str(path))
    clin = table[list(clinical)].reset_index(drop=True).set_axis(obs.index) if clinical else None
    return ImageSet(np.stack(arrays), obs, clin, str(path))


def read_image_npz(path: str | Path, *, size: int = 28, pseudo_patients: int | None = None,
                   seed: int = 0, splits: Sequence[str] = NPZ_SPLITS) -> ImageSet:
    """A MedMNIST-style file: ``<split>_images`` ``[N, H, W]`` or ``[N, H, W, C]`` uint8 and
    ``<split>_labels`` ``[N]`` or ``[N, 1]``. It has no patients: with ``pseudo_patients`` the
    images are split into random groups (folds then measure new images, not new patients)."""
    from biocls.preprocess._images import IMAGE, resize_transforms, to_uint8

    path = Path(path)
    if not path.exists():
        raise BioclsError("file not found", where=str(path), fix="check `input` in the config")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:
        raise BioclsError(f"not a readable .npz ({type(e).__name__})", where=str(path),
                          fix="save it with numpy.savez") from None
    parts, labels, names = [], [], []
    for split in splits:
        if f"{split}_images" not in npz.files or f"{split}_labels" not in npz.files:
            raise BioclsError(f"no array '{split}_images' or '{split}_labels' (has: "
                              f"{', '.join(npz.files)})", where=str(path),
                              fix="use MedMNIST's layout: train_/val_/test_ images and labels")
        imgs, lab = npz[f"{split}_images"], np.asarray(npz[f"{split}_labels"]).reshape(-1)
        if imgs.ndim not in (3, 4) or len(imgs) != len(lab):
            raise BioclsError(f"'{split}_images' has shape {imgs.shape} for {len(lab)} labels",
                              where=str(path), fix="images [N, H, W] or [N, H, W, C], one "
                                                   "label each")
        if imgs.ndim == 4 and imgs.shape[-1] not in (1, 3):
            raise BioclsError(f"'{split}_images' has {imgs.shape[-1]} channels", where=str(path),
                              fix="use grey (1) or RGB (3) images")
        chw = imgs[:, None] if imgs.ndim == 3 else np.moveaxis(imgs, -1, 1)
        if chw.shape[-1] != size or chw.shape[-2] != size:
            tf = resize_transforms(size)
            chw = np.stack([to_uint8(np.asarray(tf({IMAGE: x.astype(np.float32)})[IMAGE]))
                            for x in chw])
        parts.append(np.ascontiguousarray(chw, dtype=np.uint8))
        labels.append(lab)
        names += [f"{split}/{i}" for i in range(len(lab))]
    images = np.concatenate(parts)
    lab = np.concatenate(labels)
    obs = pd.DataFrame(index=pd.Index([f"img{i:06d}" for i in range(len(lab))], dtype=str))
    obs["biocls_image"] = names
    obs["biocls_split"] = np.concatenate([[s] * len(x) for s, x in zip(splits, labels,
                                                                        strict=True)])
    obs["biocls_cell_type"] = [str(v) for v in lab]
    if not pseudo_patients:
        raise BioclsError("an .npz has no patients", where=str(path),
                          fix="set pseudo_patients: N")
    from biocls.splits import assign_pseudo_patients

    obs["biocls_patient"] = assign_pseudo_patients(len(obs), pseudo_patients, seed=seed)
    return ImageSet(images, obs, None, str(path))


def _labels(obs: pd.DataFrame, table: pd.DataFrame, roles: dict[str, str | None],
            pseudo_patients: int | None, seed: int, where: str) -> None:
    from biocls.splits import assign_pseudo_patients

    if roles["cell_type"] is not None:
        obs["biocls_cell_type"] = table[roles["cell_type"]].to_numpy()
    if roles["cell_state"] is not None:
        state = table[roles["cell_state"]].replace("", np.nan)
        obs["biocls_cell_state"] = state.to_numpy(dtype=object)
    if pseudo_patients:
        obs["biocls_patient"] = assign_pseudo_patients(len(obs), pseudo_patients, seed=seed)
    elif roles["patient"] is not None:
        obs["biocls_patient"] = table[roles["patient"]].to_numpy()
    elif roles["cell_type"] is not None:
        raise BioclsError("no patient column and no pseudo_patients", where=where,
                          fix="set keys.patient, or pseudo_patients: N for a single donor")
