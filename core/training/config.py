"""Training configuration: a YAML file -> validated dataclasses (clear error per bad key)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..errors import FusionLensError
from ..fusion import FUSIONS


class ConfigError(FusionLensError, ValueError):
    """A training config that can't be used; the message names the key."""


@dataclass
class DataConfig:
    cohort: str | None = None          # "dermatology" | "diabetes" | None (then ``path``)
    path: str | None = None            # a dataset in one of the loader layouts
    n: int = 10000                     # dermatology cohort size
    seed: int = 0
    image_size: int = 224


@dataclass
class TrainOptions:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    warmup_epochs: int = 0             # linear learning-rate warm-up before the cosine decay (transformer fusions)
    weight_decay: float = 1e-4         # on weight matrices only: never on biases, norms, missing-modality
                                       # embeddings or the fusion's mechanism parameters (module.param_groups)
    mechanism_lr_mult: float = 10.0    # learning-rate multiplier of the mechanism parameters (temperature,
                                       # level / scale / rank logits, gate biases, MoE router)
    gate_entropy_weight: float = 0.0   # optional regulariser: + w * mean binary entropy of the modality weights
                                       # (decisive gates); off by default
    gate_balance_weight: float = 0.0   # optional: + w * (M * sum_m mean_batch(w_m)^2 - 1), the mixture-of-experts
                                       # importance loss: keeps every input in use across a batch, so gates that
                                       # choose per case cannot collapse onto one input; off by default
    mechanism_refit_epochs: int = 0    # after early stopping: fit the fusion's mechanism scalars (temperature, scale /
                                       # level logits) on the training split for this many epochs, every other weight
                                       # frozen (they learn slowly and the network stops early; off by default)
    mechanism_refit_lr: float = 0.05
    mechanism_refit_params: str = "scalars"  # what the refit fits: "scalars" (Fusion.MECHANISM_SCALARS) or "mechanism"
                                       # (Fusion.MECHANISM_PARAMETERS: the scalars and the layers that make the gates)
    mechanism_refit_layer_lr: float = 1e-3   # Adam rate of those gate layers in a "mechanism" refit (the scalars
                                       # keep mechanism_refit_lr)
    patience: int = 6                  # early stopping on validation balanced accuracy
    loss: str = "ce"                   # "ce" | "focal"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    logit_adjustment: float = 0.0      # tau of Menon et al.: train on logits + tau * log(prior)
    weighted_sampler: bool = True      # class-balanced sampling for the long tail
    modality_dropout: float = 0.1      # chance of hiding each present modality of a training case
    stream_dropout: float = 0.0        # dual-expert image encoders (issue 15): chance that a training case's lesion
                                       # or global stream (half each) is blanked, so each stream is sometimes the only
                                       # source; off by default
    stream_dropout_fill: str = "other"  # what a blanked stream shows: "other" = the kept stream's features (the mix
                                       # is then that stream alone whatever the gate says, and the gate gets no
                                       # gradient from the case), "mean" = the stream's training-split mean
                                       # (dataset.stream_dropout explains the choice)
    stream_gate_balance: float = 0.0   # dual-expert learned / entropy gate: + w * the importance loss of [w_l, w_g]
                                       # over a batch's unblanked cases (module.gate_balance_loss): keeps both streams
                                       # in use across a batch, so the gate cannot settle on one stream for every
                                       # case; off by default
    disagreement_weighting: bool = False  # seed 003: weight the fusion loss by exp(symmetric KL of unimodal heads)
    kl_clip: float = 2.0
    uncertainty_weight: float = 0.1    # auxiliary loss teaching log_var to predict the case's loss
    moe_balance_weight: float = 0.01   # mixture-of-experts head: weight of the expert balance loss
    reconstruction_weight: float = 1.0  # missing: reconstruct: weight of the feature reconstruction loss
    refer_fraction: float = 0.2        # the referral threshold refers this share of validation cases
    mc_samples: int = 30
    seed: int = 0
    num_workers: int = 0
    cpu_threads: int | None = 1        # small models train faster on one thread than on contended two


@dataclass
class TrainerOptions:
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    precision: str = "auto"            # "auto": 16-mixed on GPU, 32 on CPU
    strategy: str = "auto"             # "auto": ddp when devices * num_nodes > 1
    progress_bar: bool = True


@dataclass
class TrainConfig:
    name: str
    variant: str
    modalities: list[str]
    out: str
    data: DataConfig = field(default_factory=DataConfig)
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    fusion_options: dict[str, Any] = field(default_factory=dict)
    fused_dim: int = 128
    head: dict[str, Any] = field(default_factory=lambda: {"hidden": 128, "blocks": 2, "dropout": 0.2})
    missing: str = "embedding"            # or "reconstruct": compensate an absent modality from the present ones
    train: TrainOptions = field(default_factory=TrainOptions)
    trainer: TrainerOptions = field(default_factory=TrainerOptions)
    shared: dict[str, str] = field(default_factory=dict)   # state prefix -> shared safetensors file

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls, values: Mapping[str, Any], where: str):
    if not isinstance(values, Mapping):
        raise ConfigError(f"'{where}' must be a mapping of keys to values.")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown key '{where}.{unknown[0]}'; known keys: {', '.join(known)}.")
    return cls(**values)


def config_from_dict(d: Mapping[str, Any]) -> TrainConfig:
    d = dict(d)
    try:
        d["data"] = _build(DataConfig, d.get("data", {}), "data")
        train = d.get("train", {})
        if isinstance(train, Mapping) and d.get("variant") in FUSIONS:   # the variant's own training defaults first
            train = {**FUSIONS.get(d["variant"]).TRAIN_OPTION_DEFAULTS, **train}
        d["train"] = _build(TrainOptions, train, "train")
        d["trainer"] = _build(TrainerOptions, d.get("trainer", {}), "trainer")
        cfg = _build(TrainConfig, d, "config")
    except TypeError as e:
        raise ConfigError(f"the config is missing a required key ({e}).") from None
    if not cfg.modalities:
        raise ConfigError("'modalities' must list at least one of image, note, metadata, spectrum.")
    if (cfg.data.cohort is None) == (cfg.data.path is None):
        raise ConfigError("set exactly one of 'data.cohort' (dermatology or diabetes) and 'data.path'.")
    if cfg.train.mechanism_lr_mult <= 0:
        raise ConfigError("'train.mechanism_lr_mult' must be positive.")
    for key in ("gate_entropy_weight", "gate_balance_weight"):
        if getattr(cfg.train, key) < 0:
            raise ConfigError(f"'train.{key}' must be zero (off) or positive.")
    if cfg.train.mechanism_refit_params not in ("scalars", "mechanism"):
        raise ConfigError("'train.mechanism_refit_params' must be 'scalars' (temperature, scale / level logits) or "
                          "'mechanism' (those and the layers that make the gates).")
    if not 0.0 <= cfg.train.stream_dropout < 1.0:
        raise ConfigError("'train.stream_dropout' must be in [0, 1) (0 = off).")
    if cfg.train.stream_gate_balance < 0:
        raise ConfigError("'train.stream_gate_balance' must be zero (off) or positive.")
    if cfg.train.stream_dropout_fill not in ("other", "mean"):
        raise ConfigError("'train.stream_dropout_fill' must be 'other' (the kept stream's features) or 'mean' "
                          "(the stream's training-split mean).")
    if cfg.train.loss not in ("ce", "focal"):
        raise ConfigError("'train.loss' must be 'ce' or 'focal'.")
    return cfg


def load_config(path: str | Path) -> TrainConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist.")
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{p}' is not valid YAML ({e}).") from None
    return config_from_dict(d or {})
