"""1-D spectrum encoder (seed 000): multi-scale convolutions with kernels 7 / 5 / 3 (global trend,
main peaks, fine peaks), mixed by a linear layer, with a residual path."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .base import Encoder, ModalityFeatures


class MultiScaleBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv1d(c_in, c_out, k, padding=k // 2) for k in (7, 5, 3))
        self.mix = nn.Conv1d(3 * c_out, c_out, 1)  # the linear mixing of the three scales
        self.norm = nn.BatchNorm1d(c_out)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv1d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mix(torch.cat([b(x) for b in self.branches], dim=1))
        return F.gelu(self.norm(y) + self.skip(x))


class SpectrumEncoder(Encoder):
    modality = "spectrum"

    def __init__(self, wavelengths: Sequence[float] | None = None, n_points: int = 1000, start: float = 950.0,
                 stop: float = 1550.0, channels: int = 32, out_dim: int = 256, pools: Sequence[int] = (4, 4, 2)):
        super().__init__()
        grid = np.asarray(wavelengths, dtype=np.float64) if wavelengths is not None else np.linspace(start, stop, n_points)
        if grid.ndim != 1 or len(grid) < 16 or np.any(np.diff(grid) <= 0):
            raise ValueError("The spectrum grid must be at least 16 strictly increasing wavelengths.")
        self.grid = grid
        self._channels, self._pools = channels, tuple(pools)
        n = len(grid)
        # per-wavelength normalisation, fitted on training spectra (saved with the weights)
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        c = channels
        self.stem = nn.Sequential(nn.Conv1d(1, c // 2, 7, stride=2, padding=3), nn.GELU())
        self.stages = nn.ModuleList([MultiScaleBlock(c // 2, c), MultiScaleBlock(c, 2 * c), MultiScaleBlock(2 * c, 4 * c)])
        self.head = nn.Sequential(nn.Linear(8 * c, out_dim), nn.LayerNorm(out_dim))
        self.out_dim, self.token_dim = out_dim, 4 * c
        self.level_dims = (c, 2 * c, 4 * c)

    def set_normalisation(self, spectra: np.ndarray) -> None:
        s = torch.as_tensor(np.asarray(spectra, dtype=np.float32))
        self.mean.copy_(s.mean(0))
        self.std.copy_(s.std(0).clamp_min(1e-6))

    def resample(self, spectrum: np.ndarray) -> np.ndarray:
        """A validated spectrum -> values on this model's grid. Accepts values already on the grid
        ([n]) or (wavelength, value) pairs ([m, 2]), interpolated linearly."""
        arr = np.asarray(spectrum, dtype=np.float64)
        if arr.ndim == 1:
            if len(arr) != len(self.grid):
                raise ValueError(f"the spectrum has {len(arr)} values but the model expects {len(self.grid)}; "
                                 "give (wavelength, value) pairs so it can be resampled.")
            return arr
        order = np.argsort(arr[:, 0])
        return np.interp(self.grid, arr[order, 0], arr[order, 1])

    def prepare(self, spectra: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        return {"spectrum": torch.tensor(np.stack([self.resample(s) for s in spectra]), dtype=torch.float32)}

    def forward(self, spectrum: torch.Tensor) -> ModalityFeatures:
        x = ((spectrum - self.mean) / self.std).unsqueeze(1)
        x = self.stem(x)
        levels = []
        for stage, pool in zip(self.stages, self._pools):
            x = F.max_pool1d(stage(x), pool, ceil_mode=True)
            levels.append(x.mean(-1))
        pooled = self.head(torch.cat([x.mean(-1), x.amax(-1)], dim=-1))
        tokens = x.transpose(1, 2)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=x.device)
        return ModalityFeatures(pooled, tuple(levels), tokens, mask)  # type: ignore[arg-type]

    def config(self) -> dict[str, Any]:
        return {"wavelengths": [float(w) for w in self.grid], "channels": self._channels,
                "out_dim": self.out_dim, "pools": list(self._pools)}
