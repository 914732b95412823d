"""The contract every fusion variant follows, and the small building blocks they share.

A variant is built from the modalities' sizes and an output size,
``Variant(specs: list[ModalitySpec], out_dim, **options)``, and its ``forward(feats, present)``
takes one :class:`ModalityFeatures` per modality (same order as ``specs``) plus the presence mask
``present`` [B, M] and returns ``(fused [B, out_dim], diagnostics)``.

Diagnostics are the explainability surface. Every variant returns ``modality_weights`` [B, M]
(non-negative, rows sum to 1: how much each modality shaped this case's fused vector, by the
variant's own mechanism) and documents its other keys in ``DIAGNOSTICS``.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from ..encoders.base import ModalityFeatures, ModalitySpec, masked_mean
from ..registry import Registry

FUSIONS: Registry[type["Fusion"]] = Registry("fusion variant")

#: diagnostics that describe the model, not the case (no batch dimension)
GLOBAL_DIAGNOSTICS = {"temperature", "level_weights", "scale_weights", "rank_weights"}

COMMON_DIAGNOSTICS = {
    "modality_weights": "[B, M] share of each modality in the fused vector (rows sum to 1)",
}


class Fusion(nn.Module):
    #: one-line description shown by ``python -m core variants`` and the dashboard
    SUMMARY: ClassVar[str] = ""
    #: key -> meaning, for every diagnostics key beyond COMMON_DIAGNOSTICS
    DIAGNOSTICS: ClassVar[dict[str, str]] = {}
    registry_name: ClassVar[str] = ""
    #: True for the single-modality baseline, the only variant built from one modality
    unimodal: ClassVar[bool] = False
    #: options training adds unless a config sets them (``build_from_config``). The constructor's own
    #: defaults stay those of packages saved before the option existed, so an old package (its
    #: ``options`` recorded as they were) rebuilds exactly the forward it was trained with.
    TRAINING_DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: training options (``TrainOptions`` fields) this variant is trained with unless a config sets them
    #: (``core.training.config.config_from_dict``), e.g. the balance loss of gates that select per case
    TRAIN_OPTION_DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: learned scalars / vectors that *are* the mechanism (name suffixes in this module): trained
    #: without weight decay and with ``train.mechanism_lr_mult``; their movement from ``MECHANISM_INIT``
    #: is measured by ``core.explain.mechanisms``
    MECHANISM_PARAMETERS: ClassVar[tuple[str, ...]] = ()
    #: the few global scalars among them (temperature, level / scale logits) that
    #: ``train.mechanism_refit_epochs`` fits after early stopping, every other weight frozen
    MECHANISM_SCALARS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, specs: Sequence[ModalitySpec], out_dim: int, **options: Any):
        super().__init__()
        if (len(specs) != 1) if self.unimodal else (len(specs) < 2):
            raise ValueError("The unimodal baseline takes exactly one modality." if self.unimodal
                             else "Fusion needs at least two modalities.")
        self.specs = list(specs)
        self.names = [s.name for s in specs]
        self.out_dim = out_dim
        self.options = options

    @classmethod
    def documented_keys(cls) -> set[str]:
        return set(COMMON_DIAGNOSTICS) | set(cls.DIAGNOSTICS)

    def forward(self, feats: Sequence[ModalityFeatures], present: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError  # pragma: no cover


def projector(d_in: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.LayerNorm(d_out), nn.GELU())


def unit_scale(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dimension *without* a learned gain or bias: zero mean, unit RMS.

    Put in front of whatever a mechanism weighs, so that the mechanism's own value is the only thing
    that sets the mix: a neighbouring layer can no longer rescale its input and absorb the value
    (which left the old gates, temperature and level / scale weights unidentifiable)."""
    return F.layer_norm(x, x.shape[-1:])


def norm_shares(x: torch.Tensor) -> torch.Tensor:
    """Non-negative [B, M] -> rows summing to 1."""
    x = x.clamp_min(0)
    return x / x.sum(-1, keepdim=True).clamp_min(1e-12)


def contribution_shares(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norms of per-modality contributions [B, d] -> shares [B, M]."""
    return norm_shares(torch.stack([p.norm(dim=-1) for p in parts], dim=-1))


class AttentionBlock(nn.Module):
    """Pre-norm transformer block: queries attend to keys (self- or cross-attention), then an MLP;
    both with residuals. Returns the head-averaged attention map for diagnostics."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.1):
        super().__init__()
        self.nq, self.nkv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))

    def forward(self, q: torch.Tensor, kv: torch.Tensor | None = None,
                kv_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        qn = self.nq(q)
        kvn = qn if kv is None else self.nkv(kv)
        pad = None if kv_mask is None else ~kv_mask
        if self._lean() and not (kv is None and self._torch_fast(qn)):
            out, w = lean_attention(self.attn, qn, None if kv is None else kvn, pad)
        else:
            out, w = self.attn(qn, kvn, kvn, key_padding_mask=pad, need_weights=True, average_attn_weights=True)
        x = q + out
        return x + self.ff(x), w

    def forward_fixed(self, q: torch.Tensor, q_fixed: bool, kv_parts: Sequence[tuple[torch.Tensor, bool]],
                      kv_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(q, cat(kv_parts' tensors, 1), kv_mask)`` (where :meth:`_lean`) for parts whose rows are all the
        same (``q_fixed``, a part's flag; see ``constant_rows``): their layer norm and projection run on the first
        row and are expanded. Layer norm and projection act token by token, so the result equals the whole batch's
        within float rounding (not bit for bit: a one-row and a batched product may round differently; the tiny test
        mmtm's fused output: largest difference 3.9e-7, tests/test_speed_17_s9.py bounds it by 1e-6). Where the block
        is not lean or any of its submodules has a hook (:func:`has_hooks`: a hook on ``nq`` / ``nkv`` would see one
        row instead of the batch), this is the ordinary :meth:`forward` on the whole tensors."""
        if not self._lean() or has_hooks(self):
            return self.forward(q, torch.cat([t for t, _ in kv_parts], 1), kv_mask)
        a = self.attn
        B, E = kv_mask.shape[0], q.shape[-1]
        W, b = a.in_proj_weight, a.in_proj_bias
        qp = F.linear(self.nq(q[:1] if q_fixed else q), W[:E], b[:E])
        ks, vs = [], []
        for t, fixed in kv_parts:
            kv = F.linear(self.nkv(t[:1] if fixed else t), W[E:], b[E:])
            k, v = (kv.expand(B, -1, -1) if fixed else kv).split(E, -1)
            ks.append(k)
            vs.append(v)
        out, w = _attend(a, qp.expand(B, -1, -1) if q_fixed else qp, torch.cat(ks, 1), torch.cat(vs, 1), ~kv_mask)
        x = q + out
        return x + self.ff(x), w

    def _torch_fast(self, x: torch.Tensor) -> bool:
        """True where torch runs this self-attention as its one fused kernel (eval mode and no gradient needed:
        a prediction), which costs less than :func:`lean_attention`'s separate operations; torch's call is kept."""
        a = self.attn
        return not a.training and not (torch.is_grad_enabled() and (x.requires_grad or a.in_proj_weight.requires_grad
                                                                     or a.out_proj.weight.requires_grad))

    def _lean(self) -> bool:
        """True where :func:`lean_attention` computes what ``self.attn`` would: dropout off (eval mode, or p = 0;
        training keeps torch's own call, its dropout draws included), a plain float batch-first module without
        hooks (a hook on the attention module still sees its call)."""
        a = self.attn
        return ((not a.training or a.dropout == 0.0) and type(a) is nn.MultiheadAttention and a.batch_first
                and a._qkv_same_embed_dim and a.in_proj_bias is not None and a.bias_k is None and not a.add_zero_attn
                and not (a._forward_hooks or a._forward_pre_hooks or a._backward_hooks
                         or getattr(a, "_backward_pre_hooks", None)))


def lean_attention(attn: nn.MultiheadAttention, qn: torch.Tensor, kvn: torch.Tensor | None,
                   pad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``attn(qn, kv, kv, key_padding_mask=pad, need_weights=True, average_attn_weights=True)`` of a batch-first
    module in eval mode (``kvn`` None: self-attention, ``kv = qn``), the arithmetic of torch's own path (packed
    in-projection, q scaled by 1/sqrt(head dim), -inf at the padded keys added to q k^T, softmax, weights @ v,
    out-projection, weights averaged over heads) without its per-call checks and with the projections run on the
    batch-first rows as they are (torch's path transposes them to sequence-first and projects with a batched
    matmul per position). Equal to torch's numbers within float rounding; gradients flow as through torch's."""
    E = qn.shape[-1]
    W, b = attn.in_proj_weight, attn.in_proj_bias
    if kvn is None:
        q, k, v = F.linear(qn, W, b).split(E, -1)
    else:
        q = F.linear(qn, W[:E], b[:E])
        k, v = F.linear(kvn, W[E:], b[E:]).split(E, -1)
    return _attend(attn, q, k, v, pad)


def _attend(attn: nn.MultiheadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            pad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lean_attention` from the projected queries [B, Lq, E], keys and values [B, Lk, E]."""
    B, Lq, E = q.shape
    Lk = k.shape[1]
    H = attn.num_heads
    hd = E // H
    q = q.reshape(B, Lq, H, hd).transpose(1, 2).reshape(B * H, Lq, hd)
    k = k.reshape(B, Lk, H, hd).transpose(1, 2).reshape(B * H, Lk, hd)
    v = v.reshape(B, Lk, H, hd).transpose(1, 2).reshape(B * H, Lk, hd)
    q = q * math.sqrt(1.0 / float(hd))
    if pad is None:
        s = torch.bmm(q, k.transpose(-2, -1))
    else:
        m = torch.zeros(B, Lk, dtype=q.dtype, device=q.device).masked_fill_(pad, float("-inf"))
        s = torch.baddbmm(m.view(B, 1, 1, Lk).expand(-1, H, -1, -1).reshape(B * H, 1, Lk), q, k.transpose(-2, -1))
    w = torch.softmax(s, -1)
    o = torch.bmm(w, v).view(B, H, Lq, hd).transpose(1, 2).reshape(B, Lq, E)
    return F.linear(o, attn.out_proj.weight, attn.out_proj.bias), w.view(B, H, Lq, Lk).mean(1)


class TokenProjector(nn.Module):
    """Each modality's tokens -> a shared width, plus a learned modality-type embedding."""

    def __init__(self, specs: Sequence[ModalitySpec], dim: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(s.token_dim, dim) for s in specs)
        self.type_emb = nn.Parameter(torch.randn(len(specs), dim) * 0.02)

    def forward(self, feats: Sequence[ModalityFeatures]) -> list[torch.Tensor]:
        return [p(f.tokens) + self.type_emb[i] for i, (p, f) in enumerate(zip(self.proj, feats))]


def others_spans(lengths: Sequence[int], names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """The key span of each modality in a concatenation of token sequences of these lengths (``concat_others``'s)."""
    spans: dict[str, tuple[int, int]] = {}
    start = 0
    for n, length in zip(names, lengths):
        spans[n] = (start, start + length)
        start += length
    return spans


def concat_others(tokens: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], names: Sequence[str], skip: int):
    """Tokens of every modality but ``skip``, concatenated, with their mask and the key span of each
    modality (so an attention map can be mapped back to image patches / note words / features)."""
    keep = [i for i in range(len(tokens)) if i != skip]
    spans: dict[str, tuple[int, int]] = {}
    start = 0
    for i in keep:
        spans[names[i]] = (start, start + tokens[i].shape[1])
        start += tokens[i].shape[1]
    return torch.cat([tokens[i] for i in keep], 1), torch.cat([masks[i] for i in keep], 1), spans


def attention_mass(w: torch.Tensor, q_mask: torch.Tensor, spans: dict[str, tuple[int, int]], names: Sequence[str]) -> torch.Tensor:
    """Attention map [B, Lq, Lk] -> [B, M]: share of the (valid) queries' attention landing on each
    modality's keys; modalities not among the keys get 0."""
    per_key = masked_mean(w, q_mask)  # [B, Lk]
    cols = [per_key[:, spans[n][0]:spans[n][1]].sum(-1) if n in spans else torch.zeros_like(per_key[:, 0]) for n in names]
    return norm_shares(torch.stack(cols, -1))


def has_hooks(module: nn.Module, skip_self: bool = False) -> bool:
    """True where ``module`` or one of its submodules (``skip_self``: a submodule only) has a forward hook, forward
    pre-hook or backward hook registered (Captum's and pytorch-grad-cam's layer hooks, a user's). A fast path that
    calls a submodule on other tensors than the ordinary forward does (one row of a batch) or skips the call must
    then take the ordinary forward, so that every hook sees the calls it expects (as the lean MiniLM forward falls
    back, core/encoders/text.py)."""
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None)
               for m in module.modules() if not (skip_self and m is module))


def constant_rows(feats: Sequence[ModalityFeatures], training: bool) -> list[bool]:
    """Per modality: True where every row of the batch holds the same features (tokens, token mask, pooled
    vector) and none needs a gradient, e.g. the inputs held fixed while another modality's integrated-gradient
    steps vary. A fusion may then compute what depends on that modality alone once, on the first row, and
    expand it: the numbers of the whole batch within float rounding (a one-row and a batched product may round
    differently), without a copy of the work per row. Never in training mode (dropout draws differ per row) nor
    for a batch of one; checked on the values, not trusted from a caller. A fusion whose submodules have hooks
    does not use it (:func:`has_hooks`)."""
    def same(t: torch.Tensor) -> bool:  # row i == row i - 1 for every i: two contiguous slices, one comparison
        return not t.requires_grad and torch.equal(t[1:], t[:-1])

    if training:
        return [False] * len(feats)
    return [f.tokens.shape[0] > 1 and same(f.tokens[[0, -1]]) and same(f.tokens) and same(f.token_mask)
            and same(f.pooled) for f in feats]


def case_diagnostics(diag: dict[str, Any], i: int) -> dict[str, Any]:
    """Row ``i`` of a batch's diagnostics (global entries kept as they are), tensors still."""
    def pick(key: str, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: pick(key, x) for k, x in v.items()}
        if torch.is_tensor(v) and key not in GLOBAL_DIAGNOSTICS:
            return v[i]
        return v
    return {k: pick(k, v) for k, v in diag.items()}
