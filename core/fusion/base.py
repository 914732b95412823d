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
        out, w = self.attn(qn, kvn, kvn, key_padding_mask=pad, need_weights=True, average_attn_weights=True)
        x = q + out
        return x + self.ff(x), w


class TokenProjector(nn.Module):
    """Each modality's tokens -> a shared width, plus a learned modality-type embedding."""

    def __init__(self, specs: Sequence[ModalitySpec], dim: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(s.token_dim, dim) for s in specs)
        self.type_emb = nn.Parameter(torch.randn(len(specs), dim) * 0.02)

    def forward(self, feats: Sequence[ModalityFeatures]) -> list[torch.Tensor]:
        return [p(f.tokens) + self.type_emb[i] for i, (p, f) in enumerate(zip(self.proj, feats))]


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


def case_diagnostics(diag: dict[str, Any], i: int) -> dict[str, Any]:
    """Row ``i`` of a batch's diagnostics (global entries kept as they are), tensors still."""
    def pick(key: str, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: pick(key, x) for k, x in v.items()}
        if torch.is_tensor(v) and key not in GLOBAL_DIAGNOSTICS:
            return v[i]
        return v
    return {k: pick(k, v) for k, v in diag.items()}
