"""Small helpers with no place of their own."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_jsonable(v: Any) -> Any:
    """Tensors, arrays and numpy scalars inside dicts / lists / tuples -> plain JSON values (floats
    rounded to 6 decimals); dict keys become strings."""
    if isinstance(v, dict):
        return {str(k): to_jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_jsonable(x) for x in v]
    if torch.is_tensor(v):
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return np.round(v.astype(np.float64), 6).tolist() if v.dtype.kind == "f" else v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v
