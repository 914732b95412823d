"""The int8 deployment option."""
from __future__ import annotations

import warnings

import torch

from ..model import MultimodalClassifier


def quantize_int8(model: MultimodalClassifier) -> MultimodalClassifier:
    """A copy of ``model`` with every nn.Linear dynamically quantized to int8 (weights int8, activations
    quantized per batch on the fly): CPU inference only, no gradients, so explanations keep using the
    float model. Convolutions (the image encoder) stay float."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        q = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=False)
    return q.eval()
