"""Tabular metadata encoder: a declared schema, a learnable per-feature selection gate (seed 000)
and an MLP with three depths, plus one token per feature for the attention variants."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .base import Encoder, ModalityFeatures


@dataclass
class Feature:
    """One column of the clinical table. ``mean``/``std`` normalise numeric values; ``baseline``
    (training mean or most frequent category) is what attributions compare against."""

    name: str
    type: str = "numeric"  # "numeric" | "categorical"
    unit: str = ""
    description: str = ""
    min: float | None = None
    max: float | None = None
    mean: float = 0.0
    std: float = 1.0
    categories: list[str] = field(default_factory=list)
    most_frequent: str | None = None
    required: bool = False

    def __post_init__(self) -> None:
        if self.type not in ("numeric", "categorical"):
            raise ValueError(f"Feature '{self.name}': type must be 'numeric' or 'categorical', not '{self.type}'.")
        if self.type == "categorical" and not self.categories:
            raise ValueError(f"Feature '{self.name}' is categorical but lists no categories.")
        if self.type == "numeric" and not (self.std > 0 and math.isfinite(self.std)):
            raise ValueError(f"Feature '{self.name}': std must be a positive number.")

    @property
    def width(self) -> int:
        """Encoded columns: value + missing flag (numeric) or one-hot + missing flag (categorical)."""
        return 2 if self.type == "numeric" else len(self.categories) + 1

    @property
    def baseline(self) -> float | str:
        return self.mean if self.type == "numeric" else (self.most_frequent or self.categories[0])

    def range_text(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.min is not None and self.max is not None:
            return f"{self.min:g} to {self.max:g}{unit}"
        if self.min is not None:
            return f"at least {self.min:g}{unit}"
        return f"at most {self.max:g}{unit}" if self.max is not None else "any number"

    def label(self) -> str:
        return f"{self.name} ({self.unit})" if self.unit else self.name


class TabularSchema:
    """The declared table: names, types, units, allowed ranges, categories, normalisation."""

    def __init__(self, features: Sequence[Feature | Mapping[str, Any]]):
        feats = [f if isinstance(f, Feature) else Feature(**dict(f)) for f in features]
        if not feats:
            raise ValueError("A tabular schema needs at least one feature.")
        names = [f.name for f in feats]
        if len(set(names)) != len(names):
            raise ValueError("Feature names in a tabular schema must be unique.")
        self.features = feats
        self.slices: list[slice] = []
        start = 0
        for f in feats:
            self.slices.append(slice(start, start + f.width))
            start += f.width
        self.width = start

    def __len__(self) -> int:
        return len(self.features)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def to_list(self) -> list[dict[str, Any]]:
        return [asdict(f) for f in self.features]

    def get(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def validate(self, metadata: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
        """Raw metadata -> typed values (None = missing) and warnings about ignored names.
        Raises CaseError with one sentence per bad field ("metadata.age": ...)."""
        from ..case import CaseError, finite_number

        metadata = dict(metadata or {})
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for f in self.features:
            v = metadata.pop(f.name, None)
            if v is None or (isinstance(v, str) and v.strip() == ""):
                if f.required:
                    errors[f"metadata.{f.name}"] = f"{f.label()} is required."
                values[f.name] = None
                continue
            if f.type == "numeric":
                try:
                    x = finite_number(v)
                except (TypeError, ValueError):
                    errors[f"metadata.{f.name}"] = f"{f.label()} must be a finite number, not '{str(v)[:40]}'."
                    continue
                lo = -math.inf if f.min is None else f.min
                hi = math.inf if f.max is None else f.max
                if not lo <= x <= hi:
                    errors[f"metadata.{f.name}"] = f"{f.label()} = {x:g} is outside the allowed range ({f.range_text()})."
                    continue
                values[f.name] = x
            else:
                key = str(v).strip()
                match = [c for c in f.categories if c.lower() == key.lower()]
                if not match:
                    errors[f"metadata.{f.name}"] = (f"{f.label()} '{key[:40]}' is not a known category; use one of: "
                                                    f"{', '.join(f.categories)}.")
                    continue
                values[f.name] = match[0]
        if errors:
            raise CaseError(errors)
        ignored = [k for k in metadata if k not in ("label", "case_id")]
        warnings = [f"Ignored metadata not used by this model: {', '.join(sorted(ignored)[:10])}."] if ignored else []
        return values, warnings

    def encode_row(self, values: Mapping[str, Any]) -> list[float]:
        """Validated values (numbers, category strings, None for missing) -> encoded columns."""
        row: list[float] = []
        for f in self.features:
            v = values.get(f.name)
            if f.type == "numeric":
                row += [0.0, 1.0] if v is None else [(float(v) - f.mean) / f.std, 0.0]
            else:
                onehot = [0.0] * len(f.categories)
                if v is not None:
                    onehot[f.categories.index(str(v))] = 1.0
                row += onehot + [1.0 if v is None else 0.0]
        return row

    def baseline_row(self) -> list[float]:
        return self.encode_row({f.name: f.baseline for f in self.features})


class TabularEncoder(Encoder):
    modality = "metadata"

    def __init__(self, schema: TabularSchema | Sequence[Mapping[str, Any]], hidden: int = 128, out_dim: int = 128,
                 token_dim: int = 32, dropout: float = 0.1):
        super().__init__()
        self.schema = schema if isinstance(schema, TabularSchema) else TabularSchema(schema)
        self._hidden, self._dropout = hidden, dropout
        n_feat, width = len(self.schema), self.schema.width
        # column -> feature membership, so one gate / one token map covers a whole one-hot group
        member = torch.zeros(n_feat, width)
        for i, s in enumerate(self.schema.slices):
            member[i, s] = 1.0
        self.register_buffer("member", member, persistent=False)
        self.gate_logits = nn.Parameter(torch.full((n_feat,), 2.0))  # gates start open (~0.88)
        self.l1 = nn.Linear(width, hidden)
        self.l2 = nn.Linear(hidden, hidden // 2)
        self.l3 = nn.Linear(hidden // 2, hidden // 4)
        self.out = nn.Sequential(nn.Linear(hidden + hidden // 2 + hidden // 4, out_dim), nn.LayerNorm(out_dim))
        self.drop = nn.Dropout(dropout)
        self.token_weight = nn.Parameter(torch.randn(n_feat, width, token_dim) * width ** -0.5)
        self.token_bias = nn.Parameter(torch.randn(n_feat, token_dim) * 0.02)  # feature identity
        self.out_dim, self.token_dim = out_dim, token_dim
        self.level_dims = (hidden, hidden // 2, hidden // 4)

    def feature_gates(self) -> torch.Tensor:
        """Per-feature selection gate in [0, 1] (seed 000's learnable feature selection)."""
        return torch.sigmoid(self.gate_logits)

    def case_input(self, case: Any) -> tuple[dict[str, Any] | None, list[str]]:
        """The case's metadata checked against this model's schema (CaseError on a bad value, warnings for
        what it ignores); None when no feature this model reads has a value."""
        v = case.metadata
        if not v:
            return v, []
        v, warnings = self.schema.validate(v)
        return (v if any(x is not None for x in v.values()) else None), warnings

    def prepare(self, values: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return {"values": torch.tensor([self.schema.encode_row(v) for v in values], dtype=torch.float32)}

    def forward(self, values: torch.Tensor) -> ModalityFeatures:
        col_gate = self.feature_gates() @ self.member  # [width]
        x = values * col_gate
        h1 = self.drop(F.gelu(self.l1(x)))
        h2 = self.drop(F.gelu(self.l2(h1)))
        h3 = F.gelu(self.l3(h2))
        pooled = self.out(torch.cat([h1, h2, h3], dim=-1))
        w = self.token_weight * self.member.unsqueeze(-1)
        tokens = torch.einsum("bc,fct->bft", x, w) + self.token_bias
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return ModalityFeatures(pooled, (h1, h2, h3), tokens, mask)

    def config(self) -> dict[str, Any]:
        return {"schema": self.schema.to_list(), "hidden": self._hidden, "out_dim": self.out_dim,
                "token_dim": self.token_dim, "dropout": self._dropout}
