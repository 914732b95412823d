"""Modality-level explanations: exact Shapley values over the present modalities, "without X"
counterfactuals, and the disagreement between the single-modality predictions. Absent modalities are
masked the way the model handles missing data (its learned missing embedding), and all 2^k coalitions
run as one batch on the cached encoder outputs."""
from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import torch

from ..model import ModelOutput
from ..package import Package
from ..uncertainty import mean_pairwise_symmetric_kl
from .context import ExplainContext


def coalition_values(ctx: ExplainContext) -> tuple[list[str], dict[frozenset[str], float]]:
    players = [m for m in ctx.model.modalities if ctx.has(m)]
    coalitions = [frozenset(c) for r in range(len(players) + 1) for c in itertools.combinations(players, r)]
    n = len(coalitions)
    present = torch.zeros(n, len(ctx.model.modalities), dtype=torch.bool)
    for i, c in enumerate(coalitions):
        for m in c:
            present[i, ctx.model.modalities.index(m)] = True
    inputs: dict[str, Any] = {}
    for j, m in enumerate(ctx.model.modalities):
        rows = int(present[:, j].sum())
        inputs[m] = ctx.raw_features(m).repeat(rows) if rows else None
    with torch.no_grad():
        feats = ctx.model.encode(inputs, present)
        fused, _ = ctx.model.fusion(feats, present)
        logits, _ = ctx.model.head(fused)
    probs = torch.softmax(logits / ctx.temperature, -1)[:, ctx.target]
    return players, {c: float(p) for c, p in zip(coalitions, probs)}


def exact_shapley(players: Sequence[str], v: Mapping[frozenset, float]) -> dict[str, float]:
    """Exact Shapley value of each player from every coalition's value ``v`` (keys: frozensets)."""
    k = len(players)
    values = {}
    for m in players:
        others = [p for p in players if p != m]
        phi = 0.0
        for r in range(len(others) + 1):
            w = math.factorial(r) * math.factorial(k - r - 1) / math.factorial(k)
            for s in itertools.combinations(others, r):
                s = frozenset(s)
                phi += w * (v[s | {m}] - v[s])
        values[m] = phi
    return values


def modality_shapley(ctx: ExplainContext) -> dict[str, Any]:
    """Exact Shapley values of the calibrated target probability; they sum to v(all) - v(none)."""
    players, v = coalition_values(ctx)
    full, empty = frozenset(players), frozenset()
    values = exact_shapley(players, v)
    return {"values": values, "full": v[full], "none": v[empty],
            "without": {m: v[full - {m}] for m in players},
            "only": {m: v[frozenset([m])] for m in players},
            "top_modality": max(values, key=values.get) if values else None,
            "coalitions": {"+".join(sorted(c)) or "(none)": p for c, p in v.items()}}


def modality_disagreement(package: Package, det: ModelOutput, present: torch.Tensor) -> torch.Tensor:
    """[B] mean pairwise symmetric KL (nats) between the calibrated predictions ``package`` makes
    from each present modality alone (the others replaced by their learned missing embedding), as
    seed 003's disagreement weighting measures it; NaN for a case with fewer than two modalities.
    One batched fusion + head pass over the single-modality rows of ``det`` (a deterministic output of
    ``package.run``), encoders not re-run. ``Package.predict`` reports the same number in its
    diagnostics from one joint pass."""
    B, M = present.shape
    rows, cols = present.nonzero(as_tuple=True)
    out = torch.full((B,), float("nan"))
    if len(rows) == 0 or M < 2:
        return out
    single = torch.zeros(len(rows), M, dtype=torch.bool)
    single[torch.arange(len(rows)), cols] = True
    inputs = {m: (det.features[j].index(rows[cols == j]) if bool((cols == j).any()) else None)
              for j, m in enumerate(package.modalities)}
    model = package.inference_model
    feats = model.encode(inputs, single)
    fused, _ = model.fusion(feats, single)
    logp = torch.log_softmax(model.head(fused)[0] / package.temperature, -1)
    for i in range(B):
        lp = logp[rows == i]
        if len(lp) >= 2:
            out[i] = mean_pairwise_symmetric_kl(lp)
    return out
