"""Token-level fusion: cross-attention, co-attention and IRENE (seed 004)."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..encoders.base import ModalityFeatures, ModalitySpec, masked_mean
from .base import FUSIONS, AttentionBlock, Fusion, TokenProjector, attention_mass, concat_others, norm_shares

ATTENTION_DIAGNOSTICS = {
    "attention": "{query: [B, Lq, Lk]} head-averaged attention of the last layer; query is a modality name or 'cls'",
    "attention_key_spans": "{query: {modality: (start, end)}} which key columns index which modality's tokens "
                           "(image patches row-major, note word pieces, table features in schema order, spectral segments)",
    "attention_mass": "[B, M, M] row = querying modality, column = share of its attention on each modality's keys",
}


def residual_shares(x_in: torch.Tensor, x_out: torch.Tensor, mask: torch.Tensor, mass: torch.Tensor, self_idx: int) -> torch.Tensor:
    """Split a querying modality's output between itself (its residual stream) and the modalities it
    attended to (the attention update, divided by attention mass). -> [B, M], rows sum to 1."""
    r = masked_mean(x_in, mask).norm(dim=-1)
    s = masked_mean(x_out - x_in, mask).norm(dim=-1)
    share_self = r / (r + s).clamp_min(1e-12)
    out = mass * (1 - share_self).unsqueeze(-1)
    out[:, self_idx] += share_self
    return out


class _QueryAttentionFusion(Fusion):
    """Modalities in ``queries`` attend to the tokens of all the others, through ``layers`` blocks."""

    DIAGNOSTICS = ATTENTION_DIAGNOSTICS

    def __init__(self, specs: Sequence[ModalitySpec], out_dim: int, queries: list[int], dim: int = 128, heads: int = 4,
                 layers: int = 1, dropout: float = 0.1, **options: Any):
        super().__init__(specs, out_dim, **options)
        if layers not in (1, 2):
            raise ValueError("Attention fusion supports 1 or 2 layers.")
        self.queries = queries
        self.tokens = TokenProjector(specs, dim)
        self.blocks = nn.ModuleList(nn.ModuleList(AttentionBlock(dim, heads, dropout) for _ in range(layers)) for _ in queries)
        self.out = nn.Sequential(nn.Linear(dim * len(queries), out_dim), nn.LayerNorm(out_dim), nn.GELU(), nn.Dropout(dropout))

    def forward(self, feats: Sequence[ModalityFeatures], present: torch.Tensor):
        toks = self.tokens(feats)
        masks = [f.token_mask for f in feats]
        B, M = present.shape[0], len(feats)
        pooled, attn, spans_all = [], {}, {}
        mass = torch.zeros(B, M, M, device=present.device)
        weights = torch.zeros(B, M, device=present.device)
        for qi, blocks in zip(self.queries, self.blocks):
            kv, kv_mask, spans = concat_others(toks, masks, self.names, qi)
            x = toks[qi]
            for li, blk in enumerate(blocks):
                y, w = blk(x, kv, kv_mask)
                if li == 0:
                    m = attention_mass(w, masks[qi], spans, self.names)
                    mass[:, qi] = m
                    weights += residual_shares(x, y, masks[qi], m, qi)
                x = y
            name = self.names[qi]
            attn[name], spans_all[name] = w, spans
            pooled.append(masked_mean(x, masks[qi]))
        diag = {"modality_weights": norm_shares(weights), "attention": attn, "attention_key_spans": spans_all, "attention_mass": mass}
        return self.out(torch.cat(pooled, -1)), diag


@FUSIONS.register("cross_attention")
class CrossAttentionFusion(_QueryAttentionFusion):
    SUMMARY = "one modality's tokens (default: the note) query the tokens of all others; 1 or 2 layers."

    def __init__(self, specs: Sequence[ModalitySpec], out_dim: int, query: str = "note", **options: Any):
        names = [s.name for s in specs]
        super().__init__(specs, out_dim, queries=[names.index(query) if query in names else 0], **options)


@FUSIONS.register("co_attention")
class CoAttentionFusion(_QueryAttentionFusion):
    SUMMARY = "bidirectional co-attention: every modality's tokens query all the others' (all-to-all for k>2)."

    def __init__(self, specs: Sequence[ModalitySpec], out_dim: int, **options: Any):
        super().__init__(specs, out_dim, queries=list(range(len(specs))), **options)


@FUSIONS.register("irene")
class IreneFusion(Fusion):
    SUMMARY = "IRENE: every modality as tokens; bidirectional multimodal blocks, then shared self-attention over all."
    DIAGNOSTICS = {
        "attention": "{'cls': [B, 1, L]} attention of the classification token over all tokens in the last shared block",
        "attention_key_spans": "{'cls': {modality: (start, end)}} which columns belong to which modality",
        "attention_mass": "[B, M, M] first bidirectional block: row = querying modality, column = share on each modality",
    }

    def __init__(self, specs: Sequence[ModalitySpec], out_dim: int, dim: int = 128, heads: int = 4, bi_layers: int = 1,
                 shared_layers: int = 2, max_tokens: int = 256, dropout: float = 0.1, **options: Any):
        super().__init__(specs, out_dim, **options)
        k = len(specs)
        self.max_tokens = max_tokens
        self.tokens = TokenProjector(specs, dim)
        self.pos = nn.Parameter(torch.randn(k, max_tokens, dim) * 0.02)
        self.bi_self = nn.ModuleList(nn.ModuleList(AttentionBlock(dim, heads, dropout) for _ in range(k)) for _ in range(bi_layers))
        self.bi_cross = nn.ModuleList(nn.ModuleList(AttentionBlock(dim, heads, dropout) for _ in range(k)) for _ in range(bi_layers))
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.shared = nn.ModuleList(AttentionBlock(dim, heads, dropout) for _ in range(shared_layers))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out_dim), nn.GELU(), nn.Dropout(dropout))

    def forward(self, feats: Sequence[ModalityFeatures], present: torch.Tensor):
        L = self.max_tokens  # longer sequences are truncated (documented; MiniLM notes are <= 128 tokens)
        xs = [t[:, :L] + self.pos[i, : min(t.shape[1], L)] for i, t in enumerate(self.tokens(feats))]
        masks = [f.token_mask[:, :L] for f in feats]
        B, M = present.shape[0], len(feats)
        mass = torch.zeros(B, M, M, device=present.device)
        for li, (selfs, crosses) in enumerate(zip(self.bi_self, self.bi_cross)):
            xs = [blk(x, None, m)[0] for blk, x, m in zip(selfs, xs, masks)]
            new = []
            for i, blk in enumerate(crosses):
                kv, kv_mask, spans = concat_others(xs, masks, self.names, i)
                y, w = blk(xs[i], kv, kv_mask)
                if li == 0:
                    mass[:, i] = attention_mass(w, masks[i], spans, self.names)
                new.append(y)
            xs = new
        seq = torch.cat([self.cls.expand(B, -1, -1)] + xs, 1)
        mask = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=seq.device)] + masks, 1)
        for blk in self.shared:
            seq, w = blk(seq, None, mask)
        cls_attn = w[:, :1, 1:]
        cls_attn = cls_attn / cls_attn.sum(-1, keepdim=True).clamp_min(1e-12)  # over the tokens, CLS itself left out
        spans, start = {}, 0
        for n, x in zip(self.names, xs):
            spans[n] = (start, start + x.shape[1])
            start += x.shape[1]
        weights = attention_mass(cls_attn, torch.ones(B, 1, dtype=torch.bool, device=seq.device), spans, self.names)
        diag = {"modality_weights": weights, "attention": {"cls": cls_attn}, "attention_key_spans": {"cls": spans}, "attention_mass": mass}
        return self.out(seq[:, 0]), diag
