"""MONAI dictionary transforms for cell images: one reading pipeline, one training pipeline.

Reading (load, channel-first, resize) is deterministic, so it runs once per image and its output
is kept as uint8 (``[C, size, size]``): what ``CacheDataset`` would cache, at a quarter of the
memory of floats. Training adds seeded augmentations on top (flips, 90° rotations, contrast,
per-channel intensity scaling as stain jitter, a brightness shift); evaluation only scales.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["IMAGE", "augment_transforms", "eval_transforms", "read_image", "read_transforms",
           "resize_transforms", "to_uint8"]

#: the key of the image in every transform's dictionary
IMAGE = "image"


def _no_meta() -> None:
    """Plain tensors instead of MetaTensors: per-image metadata is not needed here, and tracking
    it makes augmentation ~4x slower on small images."""
    from monai.data import set_track_meta

    set_track_meta(False)


def read_transforms(size: int, *, grey: bool = False):  # noqa: ANN201 - monai Compose
    """Load a PNG/TIFF path, put channels first and resize to ``size × size``.

    Rows and columns keep their file order (``reverse_indexing=False``), so an image read from a
    file and the same array from an ``.npz`` agree pixel for pixel. Without per-image metadata
    the channel axis is stated: last for colour files, absent (``grey``) for grey ones.
    """
    from monai.data import PILReader
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized

    _no_meta()
    return Compose([
        LoadImaged(keys=IMAGE, reader=PILReader(reverse_indexing=False, converter=_rgb_or_grey),
                   image_only=True),
        EnsureChannelFirstd(keys=IMAGE, channel_dim="no_channel" if grey else -1),
        Resized(keys=IMAGE, spatial_size=(size, size), mode="area"),
    ])


def resize_transforms(size: int):  # noqa: ANN201
    """Channel-first arrays (from an ``.npz``) resized to ``size × size``."""
    from monai.transforms import Compose, Resized

    _no_meta()
    return Compose([Resized(keys=IMAGE, spatial_size=(size, size), mode="area")])


def read_image(path: str | Path, size: int) -> np.ndarray:
    """One image file as uint8 ``[C, size, size]``, ``C`` 1 (grey) or 3 (colour)."""
    from PIL import Image

    with Image.open(path) as im:  # only the header: grey or colour decides the channel axis
        grey = im.mode in _GREY
    return to_uint8(np.asarray(read_transforms(size, grey=grey)({IMAGE: str(path)})[IMAGE]))


#: PIL modes read as one grey channel; every other mode is converted to RGB
_GREY = ("1", "L", "I", "I;16", "F")


def _rgb_or_grey(im):  # noqa: ANN001, ANN202 - a PIL image
    """Palette, alpha and CMYK images become RGB (alpha carries no stain); grey stays grey."""
    return im if im.mode in _GREY or im.mode == "RGB" else im.convert("RGB")


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Round and clip to 0–255: what every stored image is, whatever its file held."""
    return np.clip(np.rint(np.asarray(arr, dtype=np.float32)), 0, 255).astype(np.uint8)


def eval_transforms():  # noqa: ANN201
    """uint8 → float in [0, 1]; nothing random."""
    from monai.transforms import Compose, ScaleIntensityRanged

    _no_meta()
    return Compose([ScaleIntensityRanged(keys=IMAGE, a_min=0, a_max=255, b_min=0.0, b_max=1.0,
                                         dtype=np.float32)])


def augment_transforms():  # noqa: ANN201
    """:func:`eval_transforms` then seeded augmentations; call ``set_random_state`` per epoch.

    Cells have no up or down, so flips and 90° rotations change nothing a label depends on;
    per-channel scaling mimics stain variation between slides and the shift brightness.
    """
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandFlipd,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    return Compose([
        *eval_transforms().transforms,
        RandFlipd(keys=IMAGE, prob=0.5, spatial_axis=0),
        RandFlipd(keys=IMAGE, prob=0.5, spatial_axis=1),
        RandRotate90d(keys=IMAGE, prob=0.5),
        RandAdjustContrastd(keys=IMAGE, prob=0.3, gamma=(0.8, 1.25)),
        RandScaleIntensityd(keys=IMAGE, factors=0.1, prob=0.5, channel_wise=True),
        RandShiftIntensityd(keys=IMAGE, offsets=0.05, prob=0.5),
    ])
