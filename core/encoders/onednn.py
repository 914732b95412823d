"""oneDNN's dense linear for frozen layers, shared by the lean MiniLM forward (``core.encoders.text``) and the
folded CNN tail of middle-stage integrated gradients (``core.explain.image_ig``)."""
from __future__ import annotations

from typing import Any

import torch


def _onednn_linear() -> Any:
    """oneDNN's dense linear (``torch.ops.mkldnn._linear_pointwise``) where this torch build has it, else None."""
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


LINEAR = _onednn_linear()


class FrozenLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` with a frozen weight and bias, through oneDNN (on this CPU its sgemm is
    ~10% faster than the MKL path ``F.linear`` takes for these shapes); the backward gives the input's gradient
    only (``grad @ weight``, oneDNN again, on the transposed view: no copy). Only where ``LINEAR`` is not None."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return LINEAR(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (weight,) = ctx.saved_tensors
        return LINEAR(grad, weight.t(), None, "none", [], "") if ctx.needs_input_grad[0] else None, None, None


class FrozenLinearReLU6(torch.autograd.Function):
    """``hardtanh(F.linear(x, weight, bias), 0, 6)`` (ReLU6) with a frozen weight and bias: the clamp runs as
    oneDNN's post-op inside the matrix product (no separate pass over the output, the same numbers: clamping is
    exact); the backward masks the gradient where the output is strictly inside (0, 6), where the input of the
    clamp was (what ``hardtanh_backward`` on that input gives), then ``grad @ weight``. Only where
    :func:`relu6_fusable` is True."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y = LINEAR(x, weight, bias, "hardtanh", [0.0, 6.0], "")
        ctx.save_for_backward(weight, y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        weight, y = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return LINEAR(torch.ops.aten.hardtanh_backward(grad, y, 0.0, 6.0), weight.t(), None, "none", [], ""), None, None


_RELU6: list[bool] = []


def relu6_fusable() -> bool:
    """True where this torch build's oneDNN linear takes the hardtanh post-op and gives ReLU6 exactly (checked once)."""
    if not _RELU6:
        ok = False
        if LINEAR is not None:
            try:
                g = torch.Generator().manual_seed(0)
                x, w, b = (torch.randn(5, 8, generator=g) * 4, torch.randn(6, 8, generator=g), torch.randn(6, generator=g))
                ok = torch.equal(LINEAR(x, w, b, "hardtanh", [0.0, 6.0], ""),
                                 torch.nn.functional.hardtanh(LINEAR(x, w, b, "none", [], ""), 0.0, 6.0))
            except (RuntimeError, TypeError):
                ok = False
        _RELU6.append(ok)
    return _RELU6[0]


def weights_key(params, buffers=()) -> tuple:
    """A cache key for values derived from frozen weights: each tensor's storage and version counter (a weight
    edited in place through autograd or replaced via ``.data`` changes it; an in-place edit of ``.data`` does not,
    as for any autograd cache)."""
    return tuple((t.data_ptr(), t._version) for t in params) + tuple((t.data_ptr(), t._version) for t in buffers)
