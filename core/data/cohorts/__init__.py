"""The demo cohorts, registered once: dermatology (synthetic demo data), diabetes (real Pima patients,
simulated spectra) and HAM10000 (real dermoscopy, data path from ``--data`` / ``FUSIONLENS_HAM10000``).

``COHORTS`` feeds the CLI's ``--cohort`` choices, ``core.training.train.load_cohort`` and the training
suites (``core.training.suite``), so nobody keeps a hand-written list of cohorts beside it. Each builder
imports its generator / loader only when called.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ...registry import Registry
from ..base import Cohort
from .ham10000 import ENV as HAM10000_ENV


@dataclass(frozen=True)
class CohortSpec:
    name: str
    load: Callable[..., Cohort]             # load(n=, seed=, image_size=, workers=) -> Cohort
    description: str = ""                    # one line for the CLI's help
    data_env: str | None = None              # real data: the environment variable naming its folder (``--data`` sets it)
    check_data: Callable[[Path], Any] | None = None  # raises DataError when that folder is not the cohort's data
    sized: bool = False                      # generated with ``n`` cases (the others have a fixed size)
    ground_truth: bool = False               # each case records the evidence that decides it (faithfulness checks)
    default_seed: int = 0                    # the seed the shipped suite was trained on
    suite: dict[str, Any] = field(default_factory=dict)  # ``train-suite``: modalities, stage 1, training options

    @property
    def generated(self) -> bool:
        """Built without outside data (no ``--data``)."""
        return self.data_env is None


COHORTS: Registry[CohortSpec] = Registry("cohort")


def cohort(name: str, **kw: Any) -> Callable[[Callable[..., Cohort]], Callable[..., Cohort]]:
    """Register the decorated builder as the cohort ``name`` (keywords: the ``CohortSpec`` fields)."""
    def deco(fn: Callable[..., Cohort]) -> Callable[..., Cohort]:
        COHORTS.register(name)(CohortSpec(name, fn, **kw))
        return fn

    return deco


def generated_cohorts() -> list[str]:
    """The cohorts usable without ``--data`` (generated, or shipped with the code)."""
    return [n for n in COHORTS.names() if COHORTS.get(n).generated]


def suite_cohorts() -> list[str]:
    return [n for n in COHORTS.names() if COHORTS.get(n).suite]


def names_sentence(names: list[str]) -> str:
    """``a, b or c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


# -- the cohorts -------------------------------------------------------------------------------------------------------
# suite: stage1 = encoders fitted once, as that modality's unimodal baseline, then frozen, cached and
# shared (stored once in _shared/) by every other package of the suite

@cohort("dermatology", description="generated dermatology cohort (synthetic demo data: image, note, metadata)",
        sized=True, ground_truth=True,
        suite={"modalities": ["image", "note", "metadata"], "n": 10000, "stage1": [],
               "train": {"epochs": 20, "batch_size": 128, "lr": 1e-3, "patience": 5, "modality_dropout": 0.15}})
def _dermatology(n: int = 10000, seed: int = 0, image_size: int = 224, workers: int | None = None) -> Cohort:
    from .dermatology import generate_dermatology

    if workers is None:   # the generator's own default
        return generate_dermatology(n=n, seed=seed, image_size=image_size)
    return generate_dermatology(n=n, seed=seed, image_size=image_size, workers=workers)


@cohort("diabetes", description="real Pima patients with simulated serum spectra (spectrum, metadata)",
        suite={"modalities": ["spectrum", "metadata"], "stage1": ["spectrum"],
               "encoders": {"spectrum": {"channels": 8, "pca_components": 20}},
               "train": {"epochs": 60, "batch_size": 32, "lr": 2e-3, "patience": 12, "modality_dropout": 0.1},
               "stage1_train": {"epochs": 80, "patience": 20, "lr": 3e-3, "weight_decay": 0.05},
               # irene's transformer blocks collapse to one class on 538 patients at the suite's lr
               "variant_train": {"irene": {"lr": 3e-4, "warmup_epochs": 5, "patience": 20}}})
def _diabetes(n: int | None = None, seed: int = 0, image_size: int | None = None, workers: int | None = None) -> Cohort:
    from .diabetes import build_diabetes

    return build_diabetes(seed=seed)


def _check_ham10000(root: Path) -> Any:
    from ..loaders import _ham_csv

    return _ham_csv(root)


# real dermoscopy: image + metadata; stage 1 fine-tunes the top of the image backbone on cached early
# activations (core.training.finetune), then every package reads that frozen encoder's cached features
@cohort("ham10000", description="HAM10000 (real dermoscopy, CC BY-NC; image, metadata): needs its data folder",
        data_env=HAM10000_ENV, check_data=_check_ham10000,
        suite={"modalities": ["image", "metadata"], "stage1": ["image"], "finetune": True,
               "encoders": {"image": {"type": "image", "arch": "efficientnet_lite0", "pretrained": False,
                                      "image_size": [200, 150], "token_grid": 3, "frozen": True}},
               # sized for two shared CPU cores (the whole suite within 90 min): large batches, short patience
               "train": {"epochs": 12, "batch_size": 256, "lr": 2e-3, "patience": 4, "modality_dropout": 0.15},
               "variant_train": {"irene": {"lr": 5e-4, "warmup_epochs": 1, "epochs": 8}}})
def _ham10000(n: int | None = None, seed: int = 0, image_size: int | None = None, workers: int | None = None) -> Cohort:
    from .ham10000 import load_ham10000_cohort   # the path comes from --data / FUSIONLENS_HAM10000, never a config

    return load_ham10000_cohort(seed=seed)
