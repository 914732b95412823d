"""``python -m core train-suite``: every fusion variant plus unimodal baselines for one cohort.

The cohort is generated / loaded once and every split is prepared once (frozen encoder outputs
computed a single time); each variant then trains only its fusion, head and the small trainable
encoders. Frozen pretrained encoders are referenced from their pip packages, never copied, so the
suite stays small on disk.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data.cohorts import COHORTS
from ..fusion import FUSIONS
from .config import DataConfig, config_from_dict
from .dataset import build_split, cache_root
from .train import build_from_config, finish_package, fit, load_cohort

logger = logging.getLogger(__name__)

# seed 003's heads and seed 001's missing-modality compensation, on one fusion variant so the rows
# beside it isolate the change (package name -> overrides of that variant's config)
EXTRAS: dict[str, dict[str, Any]] = {
    "gated_moe": {"variant": "gated", "head": {"type": "moe", "hidden": 128, "experts": 4, "top_k": 2, "dropout": 0.2}},
    "gated_kan": {"variant": "gated", "head": {"type": "kan", "hidden": 32, "grid": 8, "dropout": 0.2}},
    "gated_reconstruct": {"variant": "gated", "missing": "reconstruct"},
    # seed 003's lesion / context dual expert (image cohorts only): learned gate between the streams
    "gated_dual_expert": {"variant": "gated", "cohorts": ["dermatology"],
                          "encoders": {"image": {"type": "dual_expert", "frozen": False, "gate": "learned"}}},
    # the same with seed 003's entropy gate w_l = sigmoid(-H(p_l)): uncertain lesions lean on the context
    "gated_dual_entropy": {"variant": "gated", "cohorts": ["dermatology"],
                           "encoders": {"image": {"type": "dual_expert", "frozen": False, "gate": "entropy", "n_classes": 7}}},
    # seed 003's HAM10000 setup: a template note written from age / sex / site as a third input. The note adds
    # nothing beyond the metadata; its modality Shapley values and disagreement show it restating them
    "gated_template_note": {"variant": "gated", "cohorts": ["ham10000"], "modalities": ["image", "note", "metadata"]},
}


def suite_spec(cohort: str) -> dict[str, Any]:
    """The cohort's suite definition, registered with the cohort (``core.data.cohorts.COHORTS``)."""
    spec = COHORTS.get(cohort).suite
    if not spec:
        raise ValueError(f"the {cohort} cohort has no training suite.")
    return spec


def suite_configs(cohort: str, out_root: Path, variants: Sequence[str] | None = None, n: int | None = None,
                  epochs: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    spec = suite_spec(cohort)
    mods = spec["modalities"]
    names = list(variants) if variants else [v for v in FUSIONS.names() if not FUSIONS.get(v).unimodal] + \
        [e for e, spec_e in EXTRAS.items() if cohort in spec_e.get("cohorts", [cohort])]
    unknown = [v for v in names if v not in FUSIONS and v not in EXTRAS]
    if unknown:
        raise ValueError(f"unknown suite member '{unknown[0]}'; choose fusion variants or: {', '.join(EXTRAS)}.")
    stage1 = spec["stage1"]
    runs = [("unimodal", [m]) for m in stage1]
    runs += [(v, EXTRAS.get(v, {}).get("modalities", mods)) for v in names if v != "unimodal"]
    if not variants or "unimodal" in variants:
        runs += [("unimodal", [m]) for m in mods if m not in stage1]
    out = []
    for variant, ms in runs:
        label = variant if variant != "unimodal" else f"unimodal_{ms[0]}"
        extra = EXTRAS.get(variant, {})
        variant = extra.get("variant", variant)
        train = dict(spec["train"], seed=seed)
        train.update(spec.get("variant_train", {}).get(variant, {}))
        if epochs:
            train["epochs"] = epochs
        if variant == "unimodal":
            train["modality_dropout"] = 0.0
            if ms[0] in spec["stage1"]:
                train.update(spec.get("stage1_train", {}))
        out.append({"name": f"{cohort}/{label}", "variant": variant, "modalities": ms,
                    **{k: v for k, v in extra.items() if k in ("head", "missing")},
                    "out": str(out_root / cohort / label),
                    "data": {"cohort": cohort, "n": n or spec.get("n", 10000), "seed": seed},
                    "encoders": {m: {**spec.get("encoders", {}).get(m, {}), **extra.get("encoders", {}).get(m, {})}
                                 for m in ms if m in spec.get("encoders", {}) or m in extra.get("encoders", {})},
                    "train": train, "trainer": {"accelerator": "auto", "progress_bar": False}})
    return out


def train_suite(cohort_name: str, out_root: str | Path = "assets/models", variants: Sequence[str] | None = None,
                n: int | None = None, epochs: int | None = None, seed: int = 0,
                log: Callable[[str], Any] | None = None) -> list[dict[str, Any]]:
    """Train the cohort's suite into ``out_root/<cohort>``; ``log`` gets one line per step (default: this
    module's logger; the CLI prints them)."""
    log = log or logger.info
    out_root = Path(out_root)
    spec = suite_spec(cohort_name)
    cfgs = [config_from_dict(c) for c in suite_configs(cohort_name, out_root, variants, n, epochs, seed)]
    t0 = time.perf_counter()
    cohort = load_cohort(DataConfig(**{k: v for k, v in vars(cfgs[0].data).items()}))
    log(f"[{cohort_name}] cohort ready: {len(cohort.items)} cases ({time.perf_counter() - t0:.0f} s)")
    rows: list[dict[str, Any]] = []
    stage1_states: dict[str, dict[str, torch.Tensor]] = {}
    shared = {f"encoders.{m}.": f"../_shared/{m}_encoder.safetensors" for m in spec["stage1"]}

    def build(cfg):
        model = build_from_config(cfg, cohort)
        for m, state in stage1_states.items():
            if m in model.encoders:
                model.encoders[m].load_state_dict(state)
                model.encoders[m].freeze()
        return model

    def run(cfg, splits, shared_files):
        t2 = time.perf_counter()
        model = build(cfg)
        model, info = fit(model, splits["train"], splits["val"], cfg.train, cfg.trainer,
                          cache_root() / "runs" / cfg.name.replace("/", "_"))
        cfg.shared = {k: v for k, v in shared_files.items() if k.split(".")[1] in model.encoders}
        path = finish_package(model, cohort, splits["val"], splits["test"], cfg, info)
        rows.append(_row(cohort_name, cfg, path, time.perf_counter() - t2))
        r = rows[-1]
        log(f"[{cohort_name}] {path.name:24s} bacc {r['balanced_accuracy']:.3f}  macro-F1 {r['macro_f1']:.3f}  "
            f"AUROC {r['auroc']:.3f}  ECE {r['ece']:.3f}  ({r['seconds']:.0f} s)")
        return model

    # stage 1: fit the encoders that have no pretrained weights, once, as their unimodal baselines.
    # Retraining a subset of variants reuses the suite's shared encoder, so the other packages
    # (which reference its sha256) stay valid.
    if variants and "unimodal" not in variants:
        from safetensors.torch import load_file

        for m in spec["stage1"]:
            f = out_root / cohort_name / "_shared" / f"{m}_encoder.safetensors"
            if f.is_file():
                prefix = f"encoders.{m}."
                stage1_states[m] = {k[len(prefix):]: v for k, v in load_file(str(f)).items()}
                log(f"[{cohort_name}] reusing the suite's {m} encoder from {f}")
    primed: dict[str, dict] = {}   # fine-tuned image features per split, written into the stage-2 cache
    finetuned_now: set[str] = set()
    if spec.get("finetune"):
        from ..data.cohorts.ham10000 import finetune_stage1

        for m in [m for m in spec["stage1"] if m not in stage1_states]:
            t1 = time.perf_counter()
            stage1_states[m], ft_info, primed = finetune_stage1(cohort, spec["encoders"][m], log=log)
            finetuned_now.add(m)
            ft_info["seconds_with_caching"] = round(time.perf_counter() - t1, 1)
            (out_root / cohort_name / "_shared").mkdir(parents=True, exist_ok=True)
            (out_root / cohort_name / "_shared" / f"{m}_finetune.json").write_text(json.dumps(ft_info, indent=2))
    for cfg in [c for c in cfgs if c.variant == "unimodal" and c.modalities[0] in spec["stage1"]
                and c.modalities[0] not in stage1_states]:
        m = cfg.modalities[0]
        splits = _prepare(build(cfg), cohort, cfg, log)
        model = run(cfg, splits, shared)
        stage1_states[m] = {k: v.detach().clone() for k, v in model.encoders[m].state_dict().items()}
    # stage 2: every other package on features computed once (frozen encoders cached)
    # (a fine-tuned stage-1 encoder's own baseline is trained here too: its head on the cached features)
    rest = [c for c in cfgs if not (c.variant == "unimodal" and c.modalities[0] in spec["stage1"]
                                    and c.modalities[0] not in finetuned_now)]
    if rest:
        plain = [c for c in rest if not _own_inputs(c)]
        if plain:
            full = max(plain, key=lambda c: len(c.modalities))
            splits = _prepare(build(full), cohort, full, log, primed)
        for cfg in rest:
            # a package whose encoders take other inputs (the dual expert's two image streams) gets its own
            # splits; their frozen parts are cached too, and the global image stream comes from the cache above
            run(cfg, _prepare(build(cfg), cohort, cfg, log) if _own_inputs(cfg) else splits, shared)
    summary = {"cohort": cohort_name, "n_cases": len(cohort.items), "seed": seed,
               "total_seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    (out_root / cohort_name).mkdir(parents=True, exist_ok=True)
    path = out_root / cohort_name / "suite.json"
    if variants and path.is_file():  # a subset retrained: keep the other packages' rows, record the run
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if isinstance(old, dict) and isinstance(old.get("rows"), list):
            mine = {r["model"] for r in rows}
            old["rows"] = [r for r in old["rows"] if r.get("model") not in mine] + rows
            old.setdefault("partial_runs", []).append({k: summary[k] for k in ("n_cases", "seed", "total_seconds")}
                                                      | {"models": sorted(mine)})
            summary = old
    path.write_text(json.dumps(summary, indent=2))
    return rows


def _own_inputs(cfg) -> bool:
    """Whether a config's encoders take inputs of their own (a dual expert's lesion crop besides the image).
    Decided on the config, before any model is built, from the encoder registry's class attribute."""
    from ..encoders import ENCODERS

    return any(e.get("type") in ENCODERS and ENCODERS.get(e["type"]).dual_expert for e in cfg.encoders.values())


def _prepare(template, cohort, cfg, log, primed=None):
    t = time.perf_counter()
    tag = json.dumps(vars(cfg.data), sort_keys=True)
    if primed and "image" in template.encoders and template.encoders["image"].frozen:
        from .finetune import prime_feature_cache

        for s in ("train", "val", "test"):
            prime_feature_cache(template.encoders["image"], cohort.split(s), tag + s, primed[s])
    splits = {s: build_split(template, cohort.split(s), cohort.labels, tag + s) for s in ("train", "val", "test")}
    log(f"[{cohort.name}] splits prepared for {', '.join(template.modalities)}; frozen encoders run once "
        f"({time.perf_counter() - t:.0f} s)")
    return splits


def _row(cohort_name: str, cfg, path: Path, seconds: float) -> dict[str, Any]:
    m = json.loads((path / "metrics.json").read_text())
    return {"cohort": cohort_name, "model": path.name, "variant": cfg.variant, "modalities": cfg.modalities,
            "seconds": round(seconds, 1),
            **{k: m[k]["value"] for k in ("balanced_accuracy", "macro_f1", "auroc", "ece_before_calibration", "ece",
                                          "error_detection_auroc", "accuracy")},
            "ci95": {k: m[k]["ci95"] for k in ("balanced_accuracy", "macro_f1", "auroc", "ece")},
            "accuracy_at_20pct_referred": m["accuracy_vs_referred"]["accuracy"][4]}


SEED003_HAM10000 = {"concat": 88.50, "add": 88.67, "multiply": 88.87, "gated": 88.73, "cross_attention": 89.11,
                    "co_attention": 85.45, "bilinear": 87.31}


def markdown_table(out_root: str | Path, cohort_name: str) -> str:
    """The README table of a trained suite, read from each package's metrics.json."""
    from ..package import discover_packages

    lines = ["| model | inputs | balanced acc. (95% CI) | macro-F1 | AUROC | ECE before → after | error-detection AUROC "
             "| acc. at 20% referred |"
             + (" seed 003 HAM10000 acc. % (different data) |" if cohort_name == "dermatology" else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if cohort_name == "dermatology" else "")]
    for path in discover_packages(Path(out_root) / cohort_name):
        m = json.loads((path / "metrics.json").read_text())
        cfg = json.loads((path / "config.json").read_text())
        b = m["balanced_accuracy"]
        row = (f"| `{path.name}` | {', '.join(cfg['architecture']['modalities'])} "
               f"| {b['value']:.3f} ({b['ci95'][0]:.3f}–{b['ci95'][1]:.3f}) "
               f"| {m['macro_f1']['value']:.3f} | {m['auroc']['value']:.3f} "
               f"| {m['ece_before_calibration']['value']:.3f} → {m['ece']['value']:.3f} "
               f"| {m['error_detection_auroc']['value']:.3f} | {m['accuracy_vs_referred']['accuracy'][4]:.3f} |")
        if cohort_name == "dermatology":
            ref = SEED003_HAM10000.get(path.name)
            row += f" {ref:.2f} |" if ref else " — |"
        lines.append(row)
    return "\n".join(lines)
