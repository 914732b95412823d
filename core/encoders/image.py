"""Image encoder: a CNN backbone exposing three feature depths, patch tokens and Grad-CAM layers.

The architectures (EfficientNet-Lite0, ResNet-18/50, a tiny test CNN) are small adapters registered by
name in :data:`core.encoders.image_backbones.BACKBONES`; this class only resizes, normalises, pools and
makes tokens.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .base import Encoder, ModalityFeatures
from .image_backbones import BACKBONES, Backbone, load_into, load_safetensors

ARCHS = tuple(BACKBONES.names())


def _image_size(size: int | Sequence[int]) -> int | tuple[int, int]:
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or min(int(v) for v in size) < 16:
            raise ValueError(f"image_size must be one number or [width, height] of at least 16 px each; got {size!r}.")
        return int(size[0]), int(size[1])
    return int(size)


def _rgb(im: Image.Image) -> Image.Image:
    return im if im.mode == "RGB" else im.convert("RGB")


class ImageEncoder(Encoder):
    modality = "image"

    def __init__(self, arch: str = "efficientnet_lite0", pretrained: bool | str = True,
                 image_size: int | Sequence[int] = 224, token_grid: int | None = None) -> None:
        super().__init__()
        # token_grid: average-pool the last feature map to token_grid x token_grid patch tokens
        # (e.g. 4 -> 16 tokens instead of 49), which keeps cached token features small for training
        self.token_grid = token_grid
        if arch not in ARCHS:
            raise ValueError(f"Unknown image architecture {arch!r}; choose one of {', '.join(ARCHS)}.")
        self.arch = arch
        self.pretrained = pretrained
        # an int: square resize (the generated cohort); [width, height]: a fixed non-square size, e.g.
        # HAM10000's native 200 x 150, so real images are neither upscaled nor squashed
        self.image_size: int | tuple[int, int] = _image_size(image_size)
        self.external_weights = False
        weights_path = pretrained if isinstance(pretrained, str) else None

        self._adapter: Backbone = BACKBONES.get(arch)
        self._adapter.build(self, pretrained)
        if weights_path:
            load_into(self.backbone, load_safetensors(weights_path), self._adapter.head_prefix, weights_path)
        self.level_dims = self._adapter.level_dims
        self.mean, self.std = self._adapter.mean, self._adapter.std
        self.out_dim = self.token_dim = self.level_dims[2]
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.eval()  # BN running stats by default; training code calls .train() explicitly

    # --- data ---------------------------------------------------------------------------------
    def prepare(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        s = self.image_size
        size = s if isinstance(s, tuple) else (s, s)
        # PIL's bilinear resize widens its kernel when shrinking, i.e. it is antialiased.
        rgb = [_rgb(im) for im in images]
        arrs = [np.asarray(im if im.size == size else im.resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)
                for im in rgb]
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255.0)
        return {"pixels": (x - self._mean.cpu()) / self._std.cpu()}

    def denormalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels -> [0, 1] RGB, for overlays."""
        return (pixels * self._std.to(pixels) + self._mean.to(pixels)).clamp(0.0, 1.0)

    # --- model --------------------------------------------------------------------------------
    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._adapter.stages(self, x)

    def forward(self, pixels: torch.Tensor) -> ModalityFeatures:  # type: ignore[override]
        return self.from_stages(self._stages(pixels))

    def from_stages(self, maps: Sequence[torch.Tensor], pooled: Sequence[torch.Tensor] = ()) -> ModalityFeatures:
        """``forward``'s output from the backbone's stage maps: the three maps, or the deepest ones with
        ``pooled`` the shallower levels already pooled (for explanations that vary only the deep maps)."""
        levels = (*pooled, *(f.mean(dim=(2, 3)) for f in maps))
        last = maps[-1]
        if self.token_grid:
            last = nn.functional.adaptive_avg_pool2d(last, self.token_grid)
        tokens = last.flatten(2).transpose(1, 2)  # [B, H*W, C], patches row-major
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return ModalityFeatures(levels[2], levels, tokens, mask)  # type: ignore[arg-type]

    def cam_layers(self) -> "OrderedDict[str, nn.Module]":
        """Layers offered in a Grad-CAM layer picker, deepest (coarsest, most semantic) first."""
        mods = self._adapter.cam_modules(self)
        return OrderedDict(zip(("last stage", "middle stage", "early stage"), mods))

    def stage_split(self) -> tuple[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                                   Callable[[torch.Tensor], torch.Tensor]]:
        """(pixels -> (early, middle) feature maps, middle map -> last map): the backbone cut at its middle
        stage, for attributions that vary the middle map (no stochastic depth)."""
        return self._adapter.split(self)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.cam_layers()["last stage"]

    def config(self) -> dict[str, Any]:
        # A path is not portable and its weights are copied into the package (external_weights is
        # False), so the architecture is rebuilt unweighted and the stored state dict loaded over it.
        return {
            "arch": self.arch,
            "pretrained": self.pretrained if isinstance(self.pretrained, bool) else False,
            "image_size": list(self.image_size) if isinstance(self.image_size, tuple) else self.image_size,
            "token_grid": self.token_grid,
        }
