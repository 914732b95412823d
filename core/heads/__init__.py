"""Classifier heads: a registry like the fusion variants'. Every head maps the fused vector to
(logits, log-variance), supports MC dropout without train mode, and may add per-case diagnostics."""
from ..registry import Registry
from .experts import KANHead, KANLayer, MoEHead
from .residual import ResidualHead

HEADS: Registry = Registry("head")
HEADS.register("residual")(ResidualHead)
HEADS.register("moe")(MoEHead)
HEADS.register("kan")(KANHead)


def build_head(in_dim: int, n_classes: int, options: dict | None = None):
    """``options``: ``{"type": name, **kwargs}`` (type defaults to the residual head)."""
    opts = dict(options or {})
    return HEADS.get(opts.pop("type", "residual"))(in_dim, n_classes, **opts)


__all__ = ["HEADS", "KANHead", "KANLayer", "MoEHead", "ResidualHead", "build_head"]
