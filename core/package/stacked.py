"""Several packages' predictions of the same cases at once (a variant comparison): ``run_many``.

Each package still prepares, encodes and fuses on its own (the fusion variants differ), but

* the cases are checked and preprocessed once per encoder configuration (``prepare_batch``'s memo),
* the residual heads that share a shape run as one stacked pass (batched matrix products over the
  packages' stacked weights) instead of one small pass each, and their MC-dropout masks are drawn
  once: every package's prediction seeds its own generator alike, so the masks are the same anyway.

The numbers are those of ``run`` package by package (to float rounding: tests/test_speed_exact.py).
"""
from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch.nn import functional as F

from ..case import Case
from ..encoders import ModalityFeatures
from ..heads import ResidualHead
from ..model import ModelOutput
from .predictor import FusedRows, finish_rows, fused_rows, head_pass, prepare_batch

if TYPE_CHECKING:
    from .package import Package

Run = tuple[ModelOutput, ModelOutput, torch.Tensor, list[list[str]]]


def run_many(packages: Sequence["Package"], cases: Sequence[Case], features: Sequence[Mapping[str, ModalityFeatures] | None],
             mc_samples: int | None = None, seed: int = 0, memo: dict[str, Any] | None = None) -> list[Run]:
    """``[pkg.run(cases, mc_samples, seed, f) for pkg, f in zip(packages, features)]`` with the shared work
    done once (see the module docstring). ``memo``: ``prepare_batch``'s memo for these cases (a fresh one
    when None)."""
    memo = {} if memo is None else memo
    staged: list[tuple[Any, FusedRows, torch.Tensor, list[list[str]], int]] = []
    for pkg, feats in zip(packages, features):
        T = max(pkg.mc_samples if mc_samples is None else mc_samples, 1)
        feats = {m: f for m, f in (feats or {}).items() if m in pkg.modalities}
        inputs, present, warnings = prepare_batch(pkg.model, cases, set(feats), memo)
        counts = present.sum(0).tolist() if feats else []
        for m, f in feats.items():
            rows = counts[pkg.modalities.index(m)]
            if rows:
                if f.pooled.shape[0] != rows:
                    raise ValueError(f"precomputed {m} features have {f.pooled.shape[0]} rows for {rows} present cases.")
                inputs[m] = f
        with torch.inference_mode():
            rows = fused_rows(pkg.inference_model, pkg.modalities, inputs, present)
        staged.append((pkg, rows, present, warnings, T))
    heads: list[Any] = [None] * len(staged)
    groups: dict[tuple, list[int]] = {}
    for k, (pkg, rows, _, _, T) in enumerate(staged):
        key = stack_key(pkg.inference_model.head, rows.fused, rows.B, T)
        if key is not None:
            groups.setdefault(key, []).append(k)
    with torch.inference_mode():
        for idx in groups.values():
            if len(idx) < 2:
                continue
            pkg0, rows0, _, _, T = staged[idx[0]]
            outs = stacked_residual_heads([staged[k][0].inference_model.head for k in idx],
                                          torch.stack([staged[k][1].fused for k in idx]), rows0.B, T,
                                          torch.Generator().manual_seed(seed))
            for k, out in zip(idx, outs):
                heads[k] = out
        out_runs: list[Run] = []
        for k, (pkg, rows, present, warnings, T) in enumerate(staged):
            if heads[k] is None:
                heads[k] = head_pass(pkg.inference_model.head, rows.fused, rows.B, T, torch.Generator().manual_seed(seed))
            det, mc = finish_rows(pkg.inference_model, rows, heads[k], pkg.temperature, T)
            out_runs.append((det, mc, present, warnings))
    return out_runs


def stack_key(head: Any, fused: torch.Tensor, n: int, T: int) -> tuple | None:
    """Heads with equal keys can run as one stacked pass (None: this head can't)."""
    if type(head) is not ResidualHead or any(type(m) is not torch.nn.Linear for m in
                                             (head.inp, head.logits, head.log_var, *(l for b in head.blocks for l in (b.l1, b.l2)))):
        return None   # another head type, or an int8 copy
    return (tuple(fused.shape), fused.dtype, n, T, head.inp.in_features, head.inp.out_features, len(head.blocks),
            head.logits.out_features, float(head.dropout), head.norm.eps, *(b.norm.eps for b in head.blocks))


# ---- the stacked residual head -----------------------------------------------------------------------

_STACKS: dict[tuple[int, ...], tuple[list[weakref.ref], tuple, dict[str, torch.Tensor]]] = {}
_STACKS_LOCK = threading.Lock()
_STACKS_KEEP = 8


def _stacked_weights(heads: Sequence[ResidualHead]) -> dict[str, torch.Tensor]:
    """The heads' parameters stacked along a new first dimension (linear weights transposed for ``baddbmm``),
    kept for the same heads while their weights are unchanged (a loaded package's never change)."""
    key = tuple(id(h) for h in heads)
    versions = tuple(p._version for h in heads for p in h.parameters())
    with _STACKS_LOCK:
        hit = _STACKS.get(key)
    if hit is not None and all(r() is h for r, h in zip(hit[0], heads)) and hit[1] == versions:
        return hit[2]

    def lin(mods):
        return torch.stack([m.weight.detach().t() for m in mods]).contiguous(), \
            torch.stack([m.bias.detach() for m in mods]).unsqueeze(1)

    def ln(mods):
        return torch.stack([m.weight.detach() for m in mods]).unsqueeze(1), torch.stack([m.bias.detach() for m in mods]).unsqueeze(1)

    w: dict[str, torch.Tensor] = {}
    w["inp.w"], w["inp.b"] = lin([h.inp for h in heads])
    for i in range(len(heads[0].blocks)):
        w[f"{i}.norm.w"], w[f"{i}.norm.b"] = ln([h.blocks[i].norm for h in heads])
        w[f"{i}.l1.w"], w[f"{i}.l1.b"] = lin([h.blocks[i].l1 for h in heads])
        w[f"{i}.l2.w"], w[f"{i}.l2.b"] = lin([h.blocks[i].l2 for h in heads])
    w["norm.w"], w["norm.b"] = ln([h.norm for h in heads])
    w["logits.w"], w["logits.b"] = lin([h.logits for h in heads])
    w["log_var.w"], w["log_var.b"] = lin([h.log_var for h in heads])
    with _STACKS_LOCK:
        if len(_STACKS) >= _STACKS_KEEP:
            _STACKS.pop(next(iter(_STACKS)))
        _STACKS[key] = ([weakref.ref(h) for h in heads], versions, w)
    return w


def stacked_residual_heads(heads: Sequence[ResidualHead], fused: torch.Tensor, n: int, T: int,
                           generator: torch.Generator | None) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``[h.forward_with_samples(f, f[:n], T, generator_seeded_alike) for h, f in zip(heads, fused)]`` as one pass:
    ``fused`` [V, N, D] (one row block per head, heads of one ``stack_key``). The dropout masks are drawn once
    from ``generator`` in the order each head draws them (input layer, then each block), so every head gets
    the masks its own freshly seeded generator would give it. -> per head (logits [N, C], log_var [N],
    MC logits [T, n, C], MC log_var [T, n])."""
    h0 = heads[0]
    w = _stacked_weights(heads)
    V, N, D = fused.shape
    p = float(h0.dropout)
    x = torch.cat([fused, fused[:, :n].unsqueeze(1).expand(V, T, n, D).reshape(V, T * n, D)], 1)

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return torch.baddbmm(w[f"{name}.b"], x, w[f"{name}.w"])

    def norm(x: torch.Tensor, name: str, eps: float) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], None, None, eps) * w[f"{name}.w"] + w[f"{name}.b"]

    def dropout(x: torch.Tensor) -> torch.Tensor:   # rows N: only, as the head's dropout(..., start=N)
        if p <= 0:
            return x
        keep = torch.rand((x.shape[1] - N, x.shape[2]), generator=generator) >= p
        return torch.cat([x[:, :N], x[:, N:] * keep / (1 - p)], 1)

    h = dropout(linear(x, "inp"))
    for i, blk in enumerate(h0.blocks):
        g = dropout(F.gelu(linear(norm(h, f"{i}.norm", blk.norm.eps), f"{i}.l1")))
        h = h + linear(g, f"{i}.l2")
    h = norm(h, "norm", h0.norm.eps)
    logits, log_var = linear(h, "logits"), linear(h, "log_var").squeeze(-1)
    C = logits.shape[-1]
    return [(logits[v, :N], log_var[v, :N], logits[v, N:].view(T, -1, C), log_var[v, N:].view(T, -1)) for v in range(V)]
