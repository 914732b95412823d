"""The encoder contract every modality follows.

An encoder turns one modality of a batch into :class:`ModalityFeatures`: a pooled vector,
three feature depths (for hierarchical fusion) and a token sequence (for the attention
variants). ``prepare`` is the non-differentiable half: raw, already-validated case values
(PIL image, note string, metadata dict, spectrum array) -> tensors for ``forward``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn


@dataclass
class ModalityFeatures:
    """What an encoder hands to fusion for one modality.

    pooled:     [B, D]       one vector per case
    levels:     3 x [B, d_i] early / middle / last depth, pooled
    tokens:     [B, N, T]    a sequence (image patches, note tokens, table features, spectral segments)
    token_mask: [B, N] bool  True where a token is real (padding and missing cases are False)
    """

    pooled: torch.Tensor
    levels: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    tokens: torch.Tensor
    token_mask: torch.Tensor
    extras: dict[str, torch.Tensor] | None = None   # per-case diagnostics of the encoder ([B] tensors)

    def _extras(self, fn) -> dict[str, torch.Tensor] | None:
        return None if not self.extras else {k: fn(v) for k, v in self.extras.items()}

    def detach(self) -> "ModalityFeatures":
        return ModalityFeatures(
            self.pooled.detach(),
            tuple(t.detach() for t in self.levels),  # type: ignore[arg-type]
            self.tokens.detach(),
            self.token_mask,
            self._extras(lambda v: v.detach()),
        )

    def index(self, idx: torch.Tensor) -> "ModalityFeatures":
        return ModalityFeatures(
            self.pooled[idx], tuple(t[idx] for t in self.levels), self.tokens[idx], self.token_mask[idx],  # type: ignore[arg-type]
            self._extras(lambda v: v[idx]),
        )

    def repeat(self, n: int) -> "ModalityFeatures":
        """Each case repeated ``n`` times along the batch (row-major: case0 x n, case1 x n, ...)."""
        rep = lambda t: t.repeat_interleave(n, dim=0)  # noqa: E731
        return ModalityFeatures(rep(self.pooled), tuple(rep(t) for t in self.levels), rep(self.tokens), rep(self.token_mask),  # type: ignore[arg-type]
                                self._extras(rep))


@dataclass(frozen=True)
class ModalitySpec:
    """Sizes a fusion variant is built from."""

    name: str
    dim: int
    level_dims: tuple[int, int, int]
    token_dim: int


class Encoder(nn.Module):
    """Base class: subclasses set the sizes in ``__init__`` and implement ``prepare``/``forward``."""

    modality: str = ""
    #: True when the weights come from a referenced source (a pip package's pretrained model) and
    #: are frozen: a model package then stores the reference, not a copy of the weights.
    external_weights: bool = False
    out_dim: int
    level_dims: tuple[int, int, int]
    token_dim: int

    def spec(self) -> ModalitySpec:
        return ModalitySpec(self.modality, self.out_dim, tuple(self.level_dims), self.token_dim)  # type: ignore[arg-type]

    def external_state_prefixes(self) -> list[str]:
        """State-dict prefixes (inside this encoder) whose weights a package references instead of
        storing: everything for a frozen pip-shipped encoder."""
        return [""] if self.external_weights and self.frozen else []

    def freeze(self) -> "Encoder":
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "Encoder":
        # a frozen encoder stays in eval mode: its BatchNorm statistics and dropout must not move
        # while the fusion and head around it are trained
        return super().train(mode and not self.frozen)

    @property
    def frozen(self) -> bool:
        params = list(self.parameters())
        return bool(params) and not any(p.requires_grad for p in params)

    #: True for an image encoder that combines a whole-image expert and a lesion-crop expert: it needs
    #: the case's lesion mask and its frozen backbone is shared by both streams. The one test for it.
    dual_expert: bool = False

    def case_input(self, case: Any) -> tuple[Any | None, list[str]]:
        """This encoder's raw input taken from a validated ``Case`` (None when the case lacks it) and any
        warnings. Encoders that need more than their own field (the metadata schema check, the spectrum's
        grid check, the lesion mask of a dual expert) override it; ``prepare_batch`` only loops."""
        return getattr(case, self.modality), []

    def prepare(self, values: Sequence[Any]) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, **inputs: torch.Tensor) -> ModalityFeatures:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-serialisable arguments that rebuild this encoder (stored in a package's config.json)."""
        raise NotImplementedError


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid tokens of each row; rows with no valid token give zeros."""
    m = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)
