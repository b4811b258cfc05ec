"""Where an image model looked: MONAI saliency maps and small PNG overlays for the report.

Convolutional encoders get Grad-CAM on their last stage (one backward pass per batch); encoders
without a spatial feature map (ViT, the patch Mixer) get occlusion sensitivity, which needs only
forward passes. Either way the map is for the class the model predicted, scaled to [0, 1].
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["overlay_png", "saliency_maps"]

#: the last spatial stage of each convolutional encoder (see biocls.models._images)
_GRADCAM_LAYERS = {"resnet": "encoder.body.layer4", "densenet121": "encoder.body.denseblock4"}


class _TypeLogits(nn.Module):
    """The image net as MONAI's visualisers expect it: images in, cell-type logits out."""

    def __init__(self, net: nn.Module, clinical: torch.Tensor | None) -> None:
        super().__init__()
        self.net = net
        self.clinical = clinical

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clinical = self.clinical
        if clinical is not None and len(clinical) != len(x):
            # occlusion: many masked copies of one image, each with that image's clinical row
            clinical = clinical[:1].expand(len(x), -1)
        return self.net(x, clinical)["cell_type"]


def saliency_maps(model: Any, images: np.ndarray, clinical: np.ndarray | None = None
                  ) -> np.ndarray:
    """``[N, H, W]`` maps in [0, 1] for a fitted :class:`~biocls.estimators.ImageClassifier`'s
    predicted cell type of each uint8 ``[N, C, H, W]`` image."""
    from monai.visualize import GradCAM, OcclusionSensitivity

    from biocls.preprocess._images import IMAGE, eval_transforms

    if len(images) == 0:
        return np.zeros((0, *images.shape[2:]), dtype=np.float32)
    net = model._check_fitted().to("cpu").eval()
    x = torch.as_tensor(eval_transforms()({IMAGE: images})[IMAGE])
    clin = None if clinical is None else torch.as_tensor(np.asarray(clinical, np.float32))
    wrapped = _TypeLogits(net, clin)
    with torch.no_grad():
        cls = wrapped(x).argmax(1)
    layer = _GRADCAM_LAYERS.get(model.encoder)
    if layer is not None:
        cam = GradCAM(wrapped, target_layers=f"net.{layer}")
        maps = cam(x, class_idx=cls).detach()[:, 0]
    else:
        out = []
        for i in range(len(x)):
            one = _TypeLogits(net, None if clin is None else clin[i:i + 1])
            # a 7 × 7 grid of masks filled with the image's mean, without overlap: 49 forward
            # passes per image
            occ = OcclusionSensitivity(one, mask_size=max(2, x.shape[-1] // 7), n_batch=64,
                                       verbose=False, mode="mean_img", overlap=0.0)
            out.append(occ(x[i:i + 1])[0][0, int(cls[i])])
        # occlusion gives the class score with each region hidden: low where it mattered
        maps = torch.stack([-m for m in out])
    maps = maps.float().numpy()
    lo, hi = maps.min((1, 2), keepdims=True), maps.max((1, 2), keepdims=True)
    return ((maps - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)


def overlay_png(image: np.ndarray, saliency: np.ndarray | None = None, *,
                scale: int = 4) -> str:
    """A ``[C, H, W]`` uint8 image (and its saliency, drawn half-transparent in the "inferno"
    colour map) as a base64 PNG, enlarged ``scale`` times without smoothing so pixels stay
    pixels."""
    from matplotlib import colormaps
    from PIL import Image

    rgb = np.repeat(image, 3, 0) if image.shape[0] == 1 else image[:3]
    rgb = np.moveaxis(rgb, 0, -1).astype(np.float32)
    if saliency is not None:
        heat = colormaps["inferno"](saliency)[..., :3] * 255.0
        rgb = 0.5 * rgb + 0.5 * heat
    im = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")
