"""Several packages' predictions of the same cases at once (a variant comparison): ``run_many``.

Each package still prepares, encodes and fuses on its own (the fusion variants differ), but

* the cases are checked and preprocessed once per encoder configuration (``prepare_batch``'s memo),
* the metadata encoders of one configuration (a suite's variants train their own) run as one stacked pass,
* shared encoders' outputs are picked into each package's rows (the single-modality rows) once, and the
  missing-modality fill (each package's learned stand-ins around the present rows) runs once per modality
  for the packages of one layout,
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
from ..encoders import ModalityFeatures, TabularEncoder
from ..heads import ResidualHead
from ..model import MissingEmbedding, ModelOutput
from .predictor import (Prediction, SelectedRows, finish_rows, fuse_rows, head_pass, input_key, posterior, predictions,
                        prepare_with_features, select_rows)

if TYPE_CHECKING:
    from .package import Package

Run = tuple[ModelOutput, ModelOutput, torch.Tensor, list[list[str]]]


def run_many(packages: Sequence["Package"], cases: Sequence[Case], features: Sequence[Mapping[str, ModalityFeatures] | None],
             mc_samples: int | None = None, seed: int = 0, memo: dict[str, Any] | None = None) -> list[Run]:
    """``[pkg.run(cases, mc_samples, seed, f) for pkg, f in zip(packages, features)]`` with the shared work
    done once (see the module docstring). ``memo``: ``prepare_batch``'s memo for these cases (a fresh one
    when None)."""
    memo = {} if memo is None else memo
    prepared = []
    for pkg, feats in zip(packages, features):
        T = max(pkg.mc_samples if mc_samples is None else mc_samples, 1)
        inputs, present, warnings = prepare_with_features(pkg, cases, feats, memo)
        prepared.append((pkg, inputs, present, warnings, T))
    with torch.inference_mode():
        _stack_tabular_encoders([(pkg.inference_model, inputs) for pkg, inputs, _, _, _ in prepared])
        picked: dict[Any, Any] = {}
        selected = [select_rows(pkg.inference_model, pkg.modalities, inputs, present, picked)
                    for pkg, inputs, present, _, _ in prepared]
        filled = stacked_encode([(pkg.inference_model, sel) for (pkg, *_), sel in zip(prepared, selected)])
        staged = [(pkg, fuse_rows(pkg.inference_model, sel, f), present, warnings, T)
                  for (pkg, _, present, warnings, T), sel, f in zip(prepared, selected, filled)]
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


def predictions_many(packages: Sequence["Package"], cases: Sequence[Case], runs: Sequence[Run]) -> list[list[Prediction]]:
    """``[predictions(pkg, cases, *run) for pkg, run in zip(packages, runs)]`` with the posteriors of the packages
    that drew the same number of MC samples computed as one batch (each package's rows divided by its own
    calibration temperature)."""
    groups: dict[tuple, list[int]] = {}
    for k, (_, mc, _, _) in enumerate(runs):
        groups.setdefault((tuple(mc.logits.shape), mc.logits.dtype), []).append(k)
    out: list[list[Prediction]] = [[] for _ in runs]
    for idx in groups.values():
        if len(idx) < 2:
            k = idx[0]
            out[k] = predictions(packages[k], cases, *runs[k])
            continue
        B = runs[idx[0]][0].logits.shape[0]
        temps = torch.tensor([float(packages[k].temperature) for k in idx], dtype=runs[idx[0]][0].logits.dtype)
        temps = temps.repeat_interleave(B).unsqueeze(-1)                       # [V * B, 1]
        post = posterior(torch.cat([runs[k][0].logits for k in idx]), torch.cat([runs[k][1].logits for k in idx], 1),
                         torch.cat([runs[k][1].log_var for k in idx], 1), temps)
        for v, k in enumerate(idx):
            out[k] = predictions(packages[k], cases, *runs[k], post=post, row0=v * B)
    return out


def stack_key(head: Any, fused: torch.Tensor, n: int, T: int) -> tuple | None:
    """Heads with equal keys can run as one stacked pass (None: this head can't)."""
    shape = _LAYOUTS.get(head, False)
    if shape is False:
        if type(head) is not ResidualHead or any(type(m) is not torch.nn.Linear for m in
                                                 (head.inp, head.logits, head.log_var, *(l for b in head.blocks for l in (b.l1, b.l2)))):
            shape = None   # another head type, or an int8 copy
        else:
            shape = (head.inp.in_features, head.inp.out_features, len(head.blocks), head.logits.out_features,
                     float(head.dropout), head.norm.eps, *(b.norm.eps for b in head.blocks))
        _LAYOUTS[head] = shape
    return None if shape is None else (tuple(fused.shape), fused.dtype, n, T, *shape)


# ---- the stacked residual head -----------------------------------------------------------------------

_STACKS: dict[tuple, tuple[list[weakref.ref], list[weakref.ref], list[int], dict[str, torch.Tensor]]] = {}
_STACKS_LOCK = threading.Lock()
_STACKS_KEEP = 32


def _cached_stack(modules: Sequence[torch.nn.Module], build) -> dict[str, torch.Tensor]:
    """``build(modules)`` (their parameters stacked along a new first dimension), kept for the same modules
    while their weights are unchanged (a loaded package's never change; a parameter changed in place bumps
    its version counter and the stack is rebuilt)."""
    key = (build.__name__, *(id(m) for m in modules))
    with _STACKS_LOCK:
        hit = _STACKS.get(key)
    if hit is not None and all(r() is m for r, m in zip(hit[0], modules)) \
            and all((p := r()) is not None and p._version == v for r, v in zip(hit[1], hit[2])):
        return hit[3]
    params = [p for m in modules for p in m.parameters()]
    w = build(modules)
    with _STACKS_LOCK:
        if len(_STACKS) >= _STACKS_KEEP:
            _STACKS.pop(next(iter(_STACKS)))
        _STACKS[key] = ([weakref.ref(m) for m in modules], [weakref.ref(p) for p in params], [p._version for p in params], w)
    return w


def _lin(mods: Sequence[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked linear layers for ``baddbmm``: weights [V, in, out], biases [V, 1, out]."""
    return torch.stack([m.weight.detach().t() for m in mods]).contiguous(), torch.stack([m.bias.detach() for m in mods]).unsqueeze(1)


def _ln(mods: Sequence[torch.nn.LayerNorm]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([m.weight.detach() for m in mods]).unsqueeze(1), torch.stack([m.bias.detach() for m in mods]).unsqueeze(1)


def _head_weights(heads: Sequence[ResidualHead]) -> dict[str, torch.Tensor]:
    w: dict[str, torch.Tensor] = {}
    w["inp.w"], w["inp.b"] = _lin([h.inp for h in heads])
    for i in range(len(heads[0].blocks)):
        w[f"{i}.norm.w"], w[f"{i}.norm.b"] = _ln([h.blocks[i].norm for h in heads])
        w[f"{i}.l1.w"], w[f"{i}.l1.b"] = _lin([h.blocks[i].l1 for h in heads])
        w[f"{i}.l2.w"], w[f"{i}.l2.b"] = _lin([h.blocks[i].l2 for h in heads])
    w["norm.w"], w["norm.b"] = _ln([h.norm for h in heads])
    w["logits.w"], w["logits.b"] = _lin([h.logits for h in heads])
    w["log_var.w"], w["log_var.b"] = _lin([h.log_var for h in heads])
    return w


def stacked_residual_heads(heads: Sequence[ResidualHead], fused: torch.Tensor, n: int, T: int,
                           generator: torch.Generator | None) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``[h.forward_with_samples(f, f[:n], T, generator_seeded_alike) for h, f in zip(heads, fused)]`` as one pass:
    ``fused`` [V, N, D] (one row block per head, heads of one ``stack_key``). The dropout masks are drawn once
    from ``generator`` in the order each head draws them (input layer, then each block), so every head gets
    the masks its own freshly seeded generator would give it. -> per head (logits [N, C], log_var [N],
    MC logits [T, n, C], MC log_var [T, n])."""
    h0 = heads[0]
    w = _cached_stack(heads, _head_weights)
    V, N, D = fused.shape
    p = float(h0.dropout)
    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return torch.baddbmm(w[f"{name}.b"], x, w[f"{name}.w"])

    def norm(x: torch.Tensor, name: str, eps: float) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], None, None, eps) * w[f"{name}.w"] + w[f"{name}.b"]

    def dropout(x: torch.Tensor) -> torch.Tensor:   # rows N: only, as the head's dropout(..., start=N)
        if p <= 0:
            return x
        keep = torch.rand((x.shape[1] - N, x.shape[2]), generator=generator) >= p
        return torch.cat([x[:, :N], x[:, N:] * keep / (1 - p)], 1)

    y = linear(fused, "inp")                 # the input layer once per distinct row, then the T copies
    h = dropout(torch.cat([y, y[:, :n].unsqueeze(1).expand(V, T, n, y.shape[-1]).reshape(V, T * n, y.shape[-1])], 1))
    for i, blk in enumerate(h0.blocks):
        g = dropout(F.gelu(linear(norm(h, f"{i}.norm", blk.norm.eps), f"{i}.l1")))
        h = h + linear(g, f"{i}.l2")
    h = norm(h, "norm", h0.norm.eps)
    logits, log_var = linear(h, "logits"), linear(h, "log_var").squeeze(-1)
    C = logits.shape[-1]
    return [(logits[v, :N], log_var[v, :N], logits[v, N:].view(T, -1, C), log_var[v, N:].view(T, -1)) for v in range(V)]


# ---- stacked tabular encoders --------------------------------------------------------------------------

def _stack_tabular_encoders(models_inputs: Sequence[tuple[Any, dict[str, Any]]]) -> None:
    """Every package's metadata encoder that is a plain ``TabularEncoder`` reading the same prepared values
    with the same configuration runs in one stacked pass; its output replaces the prepared input in ``inputs``
    (``fused_rows`` takes encoder outputs as they are)."""
    groups: dict[tuple, list[tuple[Any, dict[str, Any]]]] = {}
    for model, inputs in models_inputs:
        enc = model.encoders["metadata"] if "metadata" in model.encoders else None
        x = inputs.get("metadata")
        if enc is None or type(enc) is not TabularEncoder or enc.training or not isinstance(x, dict) \
                or any(type(m) is not torch.nn.Linear for m in (enc.l1, enc.l2, enc.l3, enc.out[0])):
            continue
        groups.setdefault((input_key(enc), id(x["values"])), []).append((enc, inputs))
    for members in groups.values():
        if len(members) < 2:
            continue
        encs = [e for e, _ in members]
        for (_, inputs), out in zip(members, stacked_tabular(encs, members[0][1]["metadata"]["values"])):
            inputs["metadata"] = out


def _tabular_weights(encs: Sequence[TabularEncoder]) -> dict[str, torch.Tensor]:
    w: dict[str, torch.Tensor] = {"gates": torch.stack([e.feature_gates().detach() for e in encs])}
    for name in ("l1", "l2", "l3"):
        w[f"{name}.w"], w[f"{name}.b"] = _lin([getattr(e, name) for e in encs])
    w["out.w"], w["out.b"] = _lin([e.out[0] for e in encs])
    w["out_norm.w"], w["out_norm.b"] = _ln([e.out[1] for e in encs])
    w["tokens.w"] = torch.stack([(e.token_weight * e.member.unsqueeze(-1)).detach() for e in encs])
    w["tokens.b"] = torch.stack([e.token_bias.detach() for e in encs]).unsqueeze(1)
    return w


def stacked_tabular(encs: Sequence[TabularEncoder], values: torch.Tensor) -> list[ModalityFeatures]:
    """``[enc(values) for enc in encs]`` as one pass (tabular encoders of one configuration, eval mode)."""
    w = _cached_stack(encs, _tabular_weights)
    x = values * (w["gates"] @ encs[0].member).unsqueeze(1)          # [V, B, width]

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return torch.baddbmm(w[f"{name}.b"], x, w[f"{name}.w"])

    h1 = F.gelu(linear(x, "l1"))
    h2 = F.gelu(linear(h1, "l2"))
    h3 = F.gelu(linear(h2, "l3"))
    pooled = linear(torch.cat([h1, h2, h3], dim=-1), "out")
    pooled = F.layer_norm(pooled, pooled.shape[-1:], None, None, encs[0].out[1].eps) * w["out_norm.w"] + w["out_norm.b"]
    tokens = torch.einsum("vbc,vfct->vbft", x, w["tokens.w"]) + w["tokens.b"]
    mask = torch.ones(tokens.shape[1:3], dtype=torch.bool, device=tokens.device)
    return [ModalityFeatures(pooled[v], (h1[v], h2[v], h3[v]), tokens[v], mask) for v in range(len(encs))]


# ---- the missing-modality fill of several packages ----------------------------------------------------

def stacked_encode(items: Sequence[tuple[Any, SelectedRows]]) -> list[list[ModalityFeatures]]:
    """``[model.encode(rows.joined, rows.present) for model, rows in items]`` (encoders already run: only the
    missing-modality fill is left), the packages with the same modalities, rows and stand-in shapes filled
    together (``MissingEmbedding.fill``'s copies, stacked); a package with feature reconstruction, or a modality
    whose features do not fit the stacked form, is filled by its own module."""
    out: list[Any] = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    for k, (model, rows) in enumerate(items):
        layout = _fill_layout(model)
        if layout is not None:
            groups.setdefault((layout, tuple(map(tuple, rows.present.tolist()))), []).append(k)
    for idx in groups.values():
        if len(idx) < 2:
            continue
        models, sels = [items[k][0] for k in idx], [items[k][1] for k in idx]
        present = sels[0].present
        per: list[list[ModalityFeatures]] = [[] for _ in idx]
        for j, m in enumerate(models[0].modalities):
            col = present[:, j].bool()
            anyrow = bool(col.any())
            raws = [s.joined.get(m) if anyrow else None for s in sels]
            for v, f in enumerate(_stacked_fill([mm.missing[m] for mm in models], raws, col)):
                per[v].append(f)
        for k, f in zip(idx, per):
            out[k] = f
    for k, (model, rows) in enumerate(items):
        if out[k] is None:
            out[k] = model.encode(rows.joined, rows.present)
    return out


_LAYOUTS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def _shapes(me: MissingEmbedding) -> tuple:
    """(pooled, levels, token) shapes and dtypes of a stand-in (parameters never change shape: computed once)."""
    hit = _LAYOUTS.get(me)
    if hit is None:
        hit = _LAYOUTS[me] = ((tuple(me.pooled.shape), me.pooled.dtype), tuple((tuple(lv.shape), lv.dtype) for lv in me.levels),
                              (tuple(me.token.shape), me.token.dtype))
    return hit


def _fill_layout(model: Any) -> tuple | None:
    """What packages filled together must share (modalities and stand-in shapes); None: fill on its own."""
    if model.reconstruct is not None or any(type(model.missing[m]) is not MissingEmbedding for m in model.modalities):
        return None
    return tuple((m, _shapes(model.missing[m])) for m in model.modalities)


def _fits(me: MissingEmbedding, f: ModalityFeatures) -> bool:
    """Whether ``me.fill(f, ...)`` takes its plain path (one index_copy per tensor) for these features."""
    (ps, pd), lvs, (ts, td) = _shapes(me)
    n = f.tokens.shape[1]
    return (not f.extras and n >= 1 and tuple(f.pooled.shape[1:]) == ps and f.pooled.dtype == pd and len(f.levels) == len(lvs)
            and all(tuple(x.shape[1:]) == s and x.dtype == d for x, (s, d) in zip(f.levels, lvs))
            and tuple(f.tokens.shape[2:]) == ts and f.tokens.dtype == td and f.token_mask.shape[1] == n)


def _missing_weights(misses: Sequence[MissingEmbedding]) -> dict[str, torch.Tensor]:
    w = {"pooled": torch.stack([me.pooled.detach() for me in misses]),
         "token": torch.stack([me.token.detach() for me in misses])}
    for i in range(len(misses[0].levels)):
        w[f"level{i}"] = torch.stack([me.levels[i].detach() for me in misses])
    return w


def _stacked_fill(misses: Sequence[MissingEmbedding], raws: Sequence[ModalityFeatures | None], col: torch.Tensor
                  ) -> list[ModalityFeatures]:
    """``[me.fill(f, col) for me, f in zip(misses, raws)]`` with one copy per tensor for all of them."""
    none = all(f is None for f in raws)
    if not none and not all(f is not None and _fits(me, f) for me, f in zip(misses, raws)):
        return [me.fill(f, col) for me, f in zip(misses, raws)]
    V, B = len(misses), col.shape[0]
    idx = col.nonzero().squeeze(1)
    shared = not none and all(f is raws[0] for f in raws)

    w = _cached_stack(misses, _missing_weights)

    def scatter(miss: torch.Tensor, xs: list[torch.Tensor] | None) -> torch.Tensor:   # miss [V, ...]
        full = miss.unsqueeze(1).expand(V, B, *miss.shape[1:])
        if xs is None:
            return full
        x = xs[0].unsqueeze(0).expand(V, *xs[0].shape) if shared else torch.stack(xs)
        return full.index_copy(1, idx, x)

    n = 1 if none else raws[0].tokens.shape[1]
    t = w["token"]
    tok_miss = torch.cat([t.unsqueeze(1), torch.zeros(V, n - 1, t.shape[1], dtype=t.dtype, device=t.device)], 1)
    mask_miss = torch.zeros(n, dtype=torch.bool, device=col.device)
    mask_miss[0] = True
    pooled = scatter(w["pooled"], None if none else [f.pooled for f in raws])
    levels = [scatter(w[f"level{i}"], None if none else [f.levels[i] for f in raws]) for i in range(len(_shapes(misses[0])[1]))]
    tokens = scatter(tok_miss, None if none else [f.tokens for f in raws])
    if none:
        masks = [mask_miss.expand(B, n)] * V
    elif shared:
        masks = [mask_miss.expand(B, n).index_copy(0, idx, raws[0].token_mask)] * V
    else:
        masks = list(mask_miss.expand(V, B, n).index_copy(1, idx, torch.stack([f.token_mask for f in raws])))
    return [ModalityFeatures(pooled[v], tuple(lv[v] for lv in levels), tokens[v], masks[v], None) for v in range(V)]
