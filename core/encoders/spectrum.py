"""1-D spectrum encoder (seed 000): multi-scale convolutions with kernels 7 / 5 / 3 (global trend,
main peaks, fine peaks), mixed by a linear layer, with a residual path."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from ..case import CaseError
from .base import Encoder, ModalityFeatures


LEVEL_BINS = 4


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
                 stop: float = 1550.0, channels: int = 32, out_dim: int = 256, pools: Sequence[int] = (4, 4, 2),
                 pca_components: int = 32):
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
        # principal axes of the training spectra, whitened (chemometrics' usual first step): the
        # residual path reads the spectrum through them, so the few directions that carry an
        # analyte (glucose) are as easy to learn as the large baseline and scatter variation
        k = min(pca_components, n)
        self._pca = pca_components
        self.register_buffer("components", torch.zeros(k, n))
        self.register_buffer("component_scale", torch.ones(k))
        c = channels
        self.stem = nn.Sequential(nn.Conv1d(1, c // 2, 7, stride=2, padding=3), nn.GELU())
        self.stages = nn.ModuleList([MultiScaleBlock(c // 2, c), MultiScaleBlock(c, 2 * c), MultiScaleBlock(2 * c, 4 * c)])
        # where a band lies is the information (glucose absorbs at specific wavenumbers), so the pooled
        # vector and the levels keep position: a linear map of the flattened final map, and each level
        # averaged into LEVEL_BINS segments rather than over the whole spectrum
        length = (n + 1) // 2
        for pool in self._pools:
            length = -(-length // pool)
        self.n_tokens = length
        self.head = nn.Linear(4 * c * length, out_dim)
        # the residual path of seed 000, taken from the input: a linear map of the whole normalised
        # spectrum, so the encoder is never worse than a linear chemometric model of the same bands
        self.linear_path = nn.Linear(min(pca_components, n), out_dim)
        self.norm = nn.LayerNorm(out_dim)
        self.pos = nn.Parameter(torch.randn(length, 4 * c) * 0.02)  # token positions along the spectrum
        self.out_dim, self.token_dim = out_dim, 4 * c
        self.level_dims = (c * LEVEL_BINS, 2 * c * LEVEL_BINS, 4 * c * LEVEL_BINS)

    def set_normalisation(self, spectra: np.ndarray) -> None:
        s = torch.as_tensor(np.asarray(spectra, dtype=np.float32))
        self.mean.copy_(s.mean(0))
        # one scale for every wavelength: per-wavelength z-scores would inflate flat, noisy regions
        # to the same weight as the bands that actually vary (glucose is a dominant direction of the
        # centred spectra but invisible in per-wavelength z-scores)
        centred = s - s.mean(0)
        self.std.fill_(float(centred.std().clamp_min(1e-6)))
        _, sv, vt = torch.linalg.svd(centred.double(), full_matrices=False)
        k = min(self.components.shape[0], vt.shape[0])  # fewer spectra than components: the rest stay zero
        self.components.zero_()
        self.component_scale.fill_(1.0)
        self.components[:k] = vt[:k].float()
        self.component_scale[:k] = (sv[:k] / max(len(s) - 1, 1) ** 0.5).float().clamp_min(1e-6)

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
        lo, hi = float(self.grid[0]), float(self.grid[-1])
        slack = 0.01 * (hi - lo)  # interpolation may not invent more than 1% of the range at either end
        if arr[order[0], 0] > lo + slack or arr[order[-1], 0] < hi - slack:
            raise ValueError(f"the spectrum covers {arr[order[0], 0]:g} to {arr[order[-1], 0]:g} but the model reads "
                             f"{lo:g} to {hi:g}; upload a spectrum that spans the model's range.")
        return np.interp(self.grid, arr[order, 0], arr[order, 1])

    def case_input(self, case: Any) -> tuple[np.ndarray | None, list[str]]:
        """The case's spectrum, checked against this model's grid (CaseError when it can't be resampled)."""
        v = case.spectrum
        if v is not None:
            try:
                self.resample(v)
            except ValueError as e:
                raise CaseError({"spectrum": str(e)[0].upper() + str(e)[1:]}) from None
        return v, []

    def prepare(self, spectra: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
        return {"spectrum": torch.tensor(np.stack([self.resample(s) for s in spectra]), dtype=torch.float32)}

    def forward(self, spectrum: torch.Tensor) -> ModalityFeatures:
        z = (spectrum - self.mean) / self.std
        x = self.stem(z.unsqueeze(1))
        levels = []
        for stage, pool in zip(self.stages, self._pools):
            x = F.max_pool1d(stage(x), pool, ceil_mode=True)
            levels.append(F.adaptive_avg_pool1d(x, LEVEL_BINS).flatten(1))
        scores = ((spectrum - self.mean) @ self.components.T) / self.component_scale
        pooled = self.norm(self.head(x.flatten(1)) + self.linear_path(scores))
        tokens = x.transpose(1, 2) + self.pos
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=x.device)
        return ModalityFeatures(pooled, tuple(levels), tokens, mask)  # type: ignore[arg-type]

    def config(self) -> dict[str, Any]:
        return {"wavelengths": [float(w) for w in self.grid], "channels": self._channels,
                "out_dim": self.out_dim, "pools": list(self._pools), "pca_components": self._pca}
