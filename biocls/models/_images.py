"""Image encoders built from MONAI, and the image net: encoder, optional clinical branch, heads.

Every encoder maps ``[B, C, H, W]`` floats to a ``[B, out_features]`` embedding, so the heads
(factored or joint, :mod:`biocls.models._heads`) and the fusion never depend on which network
is underneath. None of them loads pretrained weights: nothing is downloaded.
"""

from __future__ import annotations

import torch
from torch import nn

from biocls.models._heads import FactoredHeads, JointHead

__all__ = ["IMAGE_ENCODERS", "ImageNet", "PatchMixer", "image_encoder"]

IMAGE_ENCODERS = ("resnet", "densenet121", "vit", "mixer")
#: width of the clinical branch's output, concatenated to the image embedding (late fusion)
CLINICAL_WIDTH = 32


class _Pooled(nn.Module):
    """A MONAI net's feature map (or token sequence) averaged into one vector per image."""

    def __init__(self, body: nn.Module, out_features: int, *, tokens: bool = False,
                 min_size: int = 0) -> None:
        super().__init__()
        self.body = body
        self.out_features = out_features
        self.tokens = tokens
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.min_size and x.shape[-1] < self.min_size:
            # DenseNet halves the image five times; small images are upsampled to survive that
            x = nn.functional.interpolate(x, size=(self.min_size, self.min_size),
                                          mode="bilinear", align_corners=False)
        h = self.body(x)
        if isinstance(h, tuple):  # ViT returns (tokens, hidden states)
            h = h[0]
        if self.tokens:
            return h.mean(1)
        return h.flatten(2).mean(2) if h.ndim > 2 else h


class PatchMixer(nn.Module):
    """MLP-Mixer over image patches (Tolstikhin et al. 2021) from MONAI's blocks.

    Patches become tokens with :class:`monai.networks.blocks.PatchEmbeddingBlock`; each block
    mixes across tokens, then across channels, with :class:`monai.networks.blocks.MLPBlock`:
    ``U = X + MLP_tok(LN(X)ᵀ)ᵀ``, ``Y = U + MLP_ch(LN(U))``.
    """

    def __init__(self, in_channels: int, size: int, *, patch: int = 4, dim: int = 128,
                 depth: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        from monai.networks.blocks import MLPBlock, PatchEmbeddingBlock

        n_tokens = (size // patch) ** 2
        self.embed = PatchEmbeddingBlock(in_channels, size, patch, hidden_size=dim, num_heads=1,
                                         proj_type="conv", pos_embed_type="none",
                                         spatial_dims=2)
        self.token_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.token_mlps = nn.ModuleList(MLPBlock(n_tokens, 2 * n_tokens, dropout)
                                        for _ in range(depth))
        self.channel_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.channel_mlps = nn.ModuleList(MLPBlock(dim, 2 * dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.out_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)  # [B, tokens, dim]
        for tn, tm, cn, cm in zip(self.token_norms, self.token_mlps, self.channel_norms,
                                  self.channel_mlps, strict=True):
            h = h + tm(tn(h).transpose(1, 2)).transpose(1, 2)
            h = h + cm(cn(h))
        return self.norm(h).mean(1)


def image_encoder(name: str, *, in_channels: int, size: int,
                  widths: tuple[int, ...] = (16, 32, 64, 128), patch: int = 4, dim: int = 128,
                  depth: int = 4, dropout: float = 0.0) -> nn.Module:
    """The encoder ``name`` (one of :data:`IMAGE_ENCODERS`) for ``size × size`` images."""
    if name == "resnet":
        from monai.networks.nets import ResNet
        from monai.networks.nets.resnet import ResNetBlock

        # ResNet-18's layout; a 3×3 stem without stride or max-pool keeps small cells' detail
        body = ResNet(ResNetBlock, [2, 2, 2, 2], list(widths), spatial_dims=2,
                      n_input_channels=in_channels, conv1_t_size=3, conv1_t_stride=1,
                      no_max_pool=True, feed_forward=False)
        return _Pooled(body, widths[-1])
    if name == "densenet121":
        from monai.networks.nets import DenseNet121

        net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1)
        return _Pooled(net.features, net.class_layers.out.in_features, min_size=32)
    if name in ("vit", "mixer") and size % patch:
        raise ValueError(f"image size {size} is not a multiple of the patch size {patch}")
    if name == "vit":
        from monai.networks.nets import ViT

        body = ViT(in_channels, size, patch, hidden_size=dim, mlp_dim=2 * dim, num_layers=depth,
                   num_heads=4, classification=False, dropout_rate=dropout, spatial_dims=2)
        return _Pooled(body, dim, tokens=True)
    if name == "mixer":
        return PatchMixer(in_channels, size, patch=patch, dim=dim, depth=depth, dropout=dropout)
    raise ValueError(f"encoder must be one of {IMAGE_ENCODERS}, got {name!r}")


class ImageNet(nn.Module):
    """``(images [B, C, H, W], clinical [B, F] or None) → dict of [B, classes] logits``.

    With ``n_clinical`` the clinical features pass through a small branch whose output is
    concatenated to the image embedding before the heads (late fusion); :meth:`embed` returns
    that joint vector, which is what the patient-identity probe reads.
    """

    def __init__(self, encoder: nn.Module, *, n_types: int, n_states: int = 0,
                 n_clinical: int = 0, head: str = "factored",
                 pairs: torch.Tensor | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.clinical = (nn.Sequential(nn.Linear(n_clinical, CLINICAL_WIDTH), nn.ReLU())
                         if n_clinical else None)
        width = encoder.out_features + (CLINICAL_WIDTH if n_clinical else 0)
        self.drop = nn.Dropout(dropout)
        if head == "joint":
            if pairs is None:
                raise ValueError("the joint head needs the trained type×state pairs")
            self.head: nn.Module = JointHead(width, pairs, n_types, n_states)
        else:
            self.head = FactoredHeads(width, n_types, n_states)

    def embed(self, x: torch.Tensor, clinical: torch.Tensor | None = None) -> torch.Tensor:
        h = self.encoder(x)
        if self.clinical is not None:
            if clinical is None:
                raise ValueError("this net fuses clinical data; pass it")
            h = torch.cat([h, self.clinical(clinical)], 1)
        return h

    def forward(self, x: torch.Tensor,
                clinical: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.head(self.drop(self.embed(x, clinical)))
