"""Multi-level fusion: hierarchical gated fusion of three depths (seed 003's hier_interact) and
EnhancedMMTM (seed 000)."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from ..encoders.base import ModalityFeatures, ModalitySpec, masked_mean
from .attention import ATTENTION_DIAGNOSTICS
from .base import (FUSIONS, AttentionBlock, Fusion, TokenProjector, attention_mass, concat_others, constant_rows,
                   has_hooks, norm_shares, others_spans, projector, unit_scale)
from .simple import GateMixer


@FUSIONS.register("hierarchical")
class HierarchicalFusion(Fusion):
    SUMMARY = "gated fusion at each of three depths -> F1, F2, F3; F = sum_i a_i F_i with learnable level weights."
    DIAGNOSTICS = {
        "level_weights": "[3] weight a_i of the early / middle / last level (sigma(w_i), or softmax(w) summing to 1)",
        "level_gates": "[B, 3, M] per level, mean effective gate of each modality (rows sum to 1)",
    }
    # softmax: only the level weights' ratios can matter to the LayerNorm'ed output, so weights that sum
    # to 1 are the identifiable form; identifiable: each level's output at unit scale before a_i weighs it
    # trained form (README #14, chosen on seed 0's validation split): one gate per input, case and level, each
    # level's gate kept from collapsing by the balance loss (core.training.module.balance_penalty)
    TRAINING_DEFAULTS = {"identifiable": True, "level_weighting": "softmax", "gate_per": "modality"}
    TRAIN_OPTION_DEFAULTS = {"gate_balance_weight": 0.3}
    MECHANISM_PARAMETERS = ("level_logits", "gate.weight", "gate.bias")
    MECHANISM_SCALARS = ("level_logits",)

    def __init__(self, specs: Sequence[ModalitySpec], out_dim: int, dim: int = 128, level_weighting: str = "sigmoid",
                 dropout: float = 0.1, identifiable: bool = False, gate_per: str = "dim", **options: Any):
        super().__init__(specs, out_dim, **options)
        if level_weighting not in ("sigmoid", "softmax"):
            raise ValueError("level_weighting must be 'sigmoid' or 'softmax'.")
        self.level_weighting, self.identifiable = level_weighting, identifiable
        self.proj = nn.ModuleList(nn.ModuleList(projector(s.level_dims[i], dim) for s in specs) for i in range(3))
        self.mixers = nn.ModuleList(GateMixer(len(specs), dim, identifiable, gate_per) for _ in range(3))
        self.level_logits = nn.Parameter(torch.zeros(3))
        self.out = nn.Sequential(nn.Linear(dim, out_dim), nn.LayerNorm(out_dim), nn.GELU(), nn.Dropout(dropout))

    def level_weights(self) -> torch.Tensor:
        f = torch.sigmoid if self.level_weighting == "sigmoid" else (lambda w: torch.softmax(w, 0))
        return f(self.level_logits)

    def forward(self, feats: Sequence[ModalityFeatures], present: torch.Tensor):
        a = self.level_weights()
        fused, gates = 0, []
        for i in range(3):
            mixed, w = self.mixers[i]([p(f.levels[i]) for p, f in zip(self.proj[i], feats)])
            fused = fused + a[i] * (unit_scale(mixed) if self.identifiable else mixed)
            gates.append(w.mean(-1))
        level_gates = torch.stack(gates, 1)
        weights = norm_shares((level_gates * a.view(1, 3, 1)).sum(1))
        return self.out(fused), {"modality_weights": weights, "level_weights": a, "level_gates": level_gates}


@FUSIONS.register("mmtm")
class EnhancedMMTM(Fusion):
    SUMMARY = ("EnhancedMMTM: self-attention per modality, 8-head cross-modal attention both ways, bottleneck + "
               "3-layer interaction MLP, gates sigmoid(.)*tau with a learnable temperature, residuals, then "
               "three-scale fusion of [a, b, a*b] with learnable scale weights.")
    DIAGNOSTICS = {
        **ATTENTION_DIAGNOSTICS,
        "gates": "[B, M] mean gate per modality, in [0, tau] ('scale' mode) or [0, 1] ('sharpness' mode)",
        "gates_per_dim": "[B, M, d] the gate of every dimension",
        "temperature": "scalar learnable temperature tau > 0",
        "gate_polarisation": "[B] 0 = the modalities are gated equally, 1 = one modality takes all the gate mass",
        "scale_weights": "[3] softmax weights of the global / meso / local scale features (sum to 1)",
    }
    # sharpness: sigmoid(z / tau), the behaviour seed 000's text describes (high tau = smooth gate, low tau =
    # polarised); identifiable: z, the gated vectors and each scale's output at unit scale, so tau, the gates
    # and the scale weights cannot be absorbed by the layers around them (docs/architecture.md)
    # trained form (README #14, chosen on the training seed's validation split): one gate per input and case
    # (gate_per='modality') without seed 000's residual, so a gate can take an input out of this case's fusion
    # and tau sets how sharply the inputs are chosen; the balance loss keeps the choice from collapsing onto
    # one input for every case
    TRAINING_DEFAULTS = {"identifiable": True, "temperature_mode": "sharpness", "gate_per": "modality",
                         "gate_residual": False}
    TRAIN_OPTION_DEFAULTS = {"gate_balance_weight": 0.1}
    MECHANISM_PARAMETERS = ("log_tau", "scale_logits", "interaction.4.weight", "interaction.4.bias")
    MECHANISM_SCALARS = ("log_tau", "scale_logits")

    def __init__(self, specs: Sequence[ModalitySpec], out_dim: int, dim: int = 128, heads: int = 8, bottleneck: int = 128,
                 temperature_mode: str = "scale", init_temperature: float = 1.0, dropout: float = 0.1,
                 identifiable: bool = False, gate_residual: bool = True, gate_per: str = "dim",
                 weights_from: str = "gates", **options: Any):
        super().__init__(specs, out_dim, **options)
        if weights_from not in ("gates", "flow"):
            raise ValueError("weights_from must be 'gates' (the gate shares) or 'flow' (the gates through the cross-attention).")
        # 'gates' (packages before): modality_weights = the gate shares. 'flow': input i's gate weighs v_i, which holds
        # i's own features *and* what i's tokens took from the others' through the cross-modal attention, so the
        # weight of input j is sum_i g_i * (share of v_i that came from j): the gate followed through the attention
        self.weights_from = weights_from
        if temperature_mode not in ("scale", "sharpness"):
            raise ValueError("temperature_mode must be 'scale' (sigmoid(z)*tau, seed 000) or 'sharpness' (sigmoid(z/tau)).")
        if init_temperature <= 0:
            raise ValueError("init_temperature must be positive.")
        k = len(specs)
        self.k, self.dim, self.temperature_mode, self.identifiable = k, dim, temperature_mode, identifiable
        # seed 000: final = g * v + v (the gate recalibrates, it cannot silence an input); False: final = g * v,
        # so a gate near 0 really removes that input from this case's fusion (a gate that selects)
        self.gate_residual = gate_residual
        if gate_per not in ("dim", "modality"):
            raise ValueError("gate_per must be 'dim' (a gate per dimension, seed 000) or 'modality' (one gate per input).")
        self.gate_per = gate_per   # 'modality': the interaction MLP gives one logit per input, shared by its dimensions
        self.tokens = TokenProjector(specs, dim)
        self.self_attn = nn.ModuleList(AttentionBlock(dim, heads, dropout) for _ in specs)
        self.cross_attn = nn.ModuleList(AttentionBlock(dim, heads, dropout) for _ in specs)
        self.pooled_proj = nn.ModuleList(projector(s.dim, dim) for s in specs)
        self.bottleneck = nn.ModuleList(nn.Linear(dim, bottleneck) for _ in specs)
        self.interaction = nn.Sequential(  # the 3-layer interaction MLP in the bottleneck space
            nn.Linear(k * bottleneck, bottleneck), nn.GELU(),
            nn.Linear(bottleneck, bottleneck), nn.GELU(),
            nn.Linear(bottleneck, k * dim))
        self.log_tau = nn.Parameter(torch.tensor(math.log(init_temperature)))
        scales = (dim, dim // 2, dim // 4)
        n_terms = k + k * (k - 1) // 2  # each modality and every pairwise Hadamard product
        self.scale_proj = nn.ModuleList(nn.ModuleList(nn.Linear(dim, s) for _ in specs) for s in scales)
        self.scale_out = nn.ModuleList(nn.Sequential(nn.Linear(n_terms * s, out_dim),
                                                     nn.LayerNorm(out_dim, elementwise_affine=not identifiable))
                                       for s in scales)
        self.scale_logits = nn.Parameter(torch.zeros(3))
        self.post = nn.Sequential(nn.GELU(), nn.Dropout(dropout))

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_tau.exp()

    def forward(self, feats: Sequence[ModalityFeatures], present: torch.Tensor):
        B, M = present.shape[0], self.k
        # an input whose rows are all the same (held fixed while another input's IG steps vary): its tokens, its
        # self-attention and its own pooled part are computed on one row and expanded (equal to the batched numbers
        # within float rounding). Not where a submodule has a hook (Captum / Grad-CAM / a user's): a hook there would
        # see one row instead of the batch, so the ordinary forward runs (checked only when some input is fixed: the
        # walk over the submodules costs ~0.1 ms, more than a prediction should pay)
        fixed = constant_rows(feats, self.training)
        if any(fixed) and has_hooks(self, skip_self=True):
            fixed = [False] * M
        first = torch.zeros(1, dtype=torch.long, device=present.device)
        ins = [f.index(first) if c else f for f, c in zip(feats, fixed)]
        toks = self.tokens(ins)
        masks = [f.token_mask for f in ins]
        # 1. self-attention inside each modality, then cross-modal attention to all the others
        selfed = [blk(x, None, m)[0] for blk, x, m in zip(self.self_attn, toks, masks)]
        owns = [masked_mean(x, m) + p(f.pooled) for x, m, p, f in zip(selfed, masks, self.pooled_proj, ins)]
        if any(fixed):
            selfed = [x.expand(B, -1, -1) if c else x for x, c in zip(selfed, fixed)]
            masks = [m.expand(B, -1) if c else m for m, c in zip(masks, fixed)]
            owns = [o.expand(B, -1) if c else o for o, c in zip(owns, fixed)]
        vs, flows, attn, spans_all = [], [], {}, {}
        mass_rows = []   # one [B, M] row per query modality, stacked after the loop (no in-place writes: the flow
        for i, blk in enumerate(self.cross_attn):   # reading below keeps each row for its backward pass)
            if any(fixed) and blk._lean():   # the fixed inputs' keys / values (and query) projected once
                others = [j for j in range(M) if j != i]
                kv_mask = torch.cat([masks[j] for j in others], 1)
                spans = others_spans([selfed[j].shape[1] for j in others], [self.names[j] for j in others])
                y, w = blk.forward_fixed(selfed[i], fixed[i], [(selfed[j], fixed[j]) for j in others], kv_mask)
            else:
                kv, kv_mask, spans = concat_others(selfed, masks, self.names, i)
                y, w = blk(selfed[i], kv, kv_mask)  # residual inside: out = attn(x) + x
            mass_rows.append(attention_mass(w, masks[i], spans, self.names))
            attn[self.names[i]], spans_all[self.names[i]] = w, spans
            own = owns[i]
            update = masked_mean(y - selfed[i], masks[i])   # what the cross-attention block added
            vs.append(own + update)
            share_self = own.norm(dim=-1) / (own.norm(dim=-1) + update.norm(dim=-1)).clamp_min(1e-12)
            flow_i = mass_rows[i] * (1 - share_self).unsqueeze(-1)
            flow_i[:, i] += share_self
            flows.append(flow_i)
        mass = torch.stack(mass_rows, 1)   # [B, M (query), M (attended)]
        # 2. adaptive gate with the learnable temperature, residual final = gated + original
        z = self.interaction(torch.cat([b(v) for b, v in zip(self.bottleneck, vs)], -1))
        if self.identifiable:  # one unit scale over all modalities' z: their relative levels survive, tau sets the sharpness
            z = unit_scale(z)
            vs = [unit_scale(v) for v in vs]
        z = z.view(B, M, self.dim)
        if self.gate_per == "modality":
            # the mean of an input's unit-scaled logits is bounded (|mean| < ~1.5), so tau alone sets how sharp the choice is
            z = z.mean(-1, keepdim=True).expand(-1, -1, self.dim)
        tau = self.temperature
        g = torch.sigmoid(z) * tau if self.temperature_mode == "scale" else torch.sigmoid(z / tau)
        finals = [g[:, i] * v + v if self.gate_residual else g[:, i] * v for i, v in enumerate(vs)]
        # 3. three scales: [a, b, a*b] (all pairwise products for k > 2), weighted sum of the scales
        sw = torch.softmax(self.scale_logits, 0)
        fused = 0
        for s in range(3):
            hs = [p(x) for p, x in zip(self.scale_proj[s], finals)]
            terms = hs + [hs[i] * hs[j] for i in range(M) for j in range(i + 1, M)]
            fused = fused + sw[s] * self.scale_out[s](torch.cat(terms, -1))
        gates = g.mean(-1)
        shares = norm_shares(gates)
        polar = (shares.amax(-1) - 1.0 / M) / (1 - 1.0 / M)
        if self.weights_from == "flow":   # [B, M]: sum_i g_i * flow_i (rows of flow_i sum to 1)
            weights = norm_shares((gates.unsqueeze(-1) * torch.stack(flows, 1)).sum(1))
        else:
            weights = shares
        diag = {"modality_weights": weights, "gates": gates, "gates_per_dim": g, "temperature": tau,
                "gate_polarisation": polar, "scale_weights": sw, "attention": attn, "attention_key_spans": spans_all,
                "attention_mass": mass}
        return self.post(fused), diag
