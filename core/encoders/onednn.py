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


def weights_key(params, buffers=()) -> tuple:
    """A cache key for values derived from frozen weights: each tensor's storage and version counter (a weight
    edited in place through autograd or replaced via ``.data`` changes it; an in-place edit of ``.data`` does not,
    as for any autograd cache)."""
    return tuple((t.data_ptr(), t._version) for t in params) + tuple((t.data_ptr(), t._version) for t in buffers)
