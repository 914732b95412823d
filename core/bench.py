"""``python -m core bench``: every stage timed against the naive way, in the same process, on the same cases.

Absolute times on shared machines drift, so each goal is a ratio of two figures measured here, one
after the other, case by case:

* ``predict`` (MC dropout T=30 re-runs only the head on the fused vector) / one plain forward pass;
* full ``explain_case`` (prediction + uncertainty, Grad-CAM, integrated gradients on every modality,
  modality Shapley) / one plain forward pass, and the naive way of the same explanation / ours:
  MC dropout by re-running the whole model T times, IG with one step per pass (note padded to 64
  tokens, 50 steps), Shapley coalitions re-encoding the case;
* comparing all variants of a cohort (frozen encoders run once) / predicting with one variant, and
  the naive comparison (every variant re-encodes) / ours;
* resident memory holding every demo package, and its growth over many explained cases.

Each figure is the median (and 90th percentile) over cases x repeats. The demo packages and demo cases
in ``assets/`` are used; nothing is downloaded.
"""
from __future__ import annotations

import gc
import logging
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .case import Case
from .package import Package, discover_packages, load_package, posterior

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
GOALS = {"predict_T30_over_forward": 1.3, "explain_over_forward": 10.0, "naive_explain_over_explain": 5.0,
         "compare_all_over_one_variant": 2.0, "memory_growth_percent": 5.0}
FULL_PARTS = ("cam", "note", "table", "spectrum", "modality", "image_ig")


def rss_mb() -> float:
    """Current resident set size of this process (Linux /proc), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timer:
    """Collects seconds per named stage: wall time (``samples``) and this process's CPU time (``cpu``), which
    other jobs on a shared machine disturb far less (with one torch thread the two agree on an idle machine)."""

    def __init__(self, repeats: int = 3):
        self.repeats = repeats
        self.samples: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def run(self, name: str, fn: Callable[[], Any], repeats: int | None = None) -> Any:
        out = None
        for _ in range(repeats or self.repeats):
            t, c = time.perf_counter(), time.process_time()
            out = fn()
            self.cpu.setdefault(name, []).append(time.process_time() - c)
            self.samples.setdefault(name, []).append(time.perf_counter() - t)
        return out

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def cpu_median(self, name: str) -> float:
        return statistics.median(self.cpu[name])

    def summary(self) -> dict[str, dict[str, float]]:
        return {k: {"median_ms": round(1000 * statistics.median(v), 2),
                    "p90_ms": round(1000 * float(np.percentile(v, 90)), 2), "n": len(v)} for k, v in self.samples.items()}


# ---- the naive ways ---------------------------------------------------------------------------------------------------

def plain_forward(pkg: Package, case: Case) -> torch.Tensor:
    """Preprocess + every encoder + fusion + head, dropout off: the unit every ratio is expressed in."""
    inputs, present, _ = pkg.prepare([case])
    with torch.inference_mode():
        return pkg.inference_model(inputs, present).logits


def naive_predict(pkg: Package, case: Case, T: int = 30) -> torch.Tensor:
    """MC dropout the obvious way: the whole model (preprocessing and encoders included) T times."""
    gen = torch.Generator().manual_seed(0)
    det = plain_forward(pkg, case)
    samples, log_vars = [], []
    for _ in range(T):
        inputs, present, _ = pkg.prepare([case])
        with torch.inference_mode():
            out = pkg.model(inputs, present, mc_samples=1, generator=gen)
        samples.append(out.logits[0])
        log_vars.append(out.log_var[0])
    return posterior(det, torch.stack(samples), torch.stack(log_vars), pkg.temperature).calibrated


def naive_note_ig(ctx, n_steps: int = 50, pad_to: int = 64) -> None:
    from captum.attr import LayerIntegratedGradients

    enc = ctx.model.encoders["note"]
    tok = enc.tokenizer(ctx.case.note or "", truncation=True, max_length=pad_to, padding="max_length",
                        return_special_tokens_mask=True, return_tensors="pt")
    ids, mask = tok["input_ids"], tok["attention_mask"]
    special = tok["special_tokens_mask"][0].bool()
    base = torch.where(special, ids[0], torch.full_like(ids[0], enc.pad_token_id)).unsqueeze(0)
    private = ctx.private_encoder("note")
    f = ctx.target_fn("note", "input_ids", encoder=private, attention_mask=mask)
    with torch.enable_grad():
        LayerIntegratedGradients(f, private.embedding_layer).attribute(ids, baselines=base, n_steps=n_steps,
                                                                       internal_batch_size=1)


def naive_tensor_ig(ctx, modality: str, key: str, base: torch.Tensor, n_steps: int = 50) -> None:
    from captum.attr import IntegratedGradients

    x = ctx.inputs[modality][key]
    with torch.enable_grad():
        IntegratedGradients(ctx.target_fn(modality, key)).attribute(x, baselines=base, n_steps=n_steps, internal_batch_size=1)


def naive_shapley(ctx) -> None:
    """Every coalition as its own full forward pass from the raw inputs (the case re-encoded each time)."""
    import itertools

    mods = ctx.model.modalities
    players = [m for m in mods if ctx.has(m)]
    for r in range(len(players) + 1):
        for c in itertools.combinations(players, r):
            present = torch.tensor([[m in c for m in mods]])
            inputs = {m: (ctx.inputs[m] if m in c else None) for m in mods}
            with torch.no_grad():
                ctx.model(inputs, present)


def naive_explain(pkg: Package, case: Case) -> None:
    from .explain import ExplainContext
    from .explain.gradcam import image_cam

    naive_predict(pkg, case)
    ctx = ExplainContext(pkg, case)
    if ctx.has("image"):
        image_cam(ctx)
        enc = ctx.pixel_encoder
        x = ctx.inputs["image"]["pixels"]
        naive_tensor_ig(ctx, "image", "pixels", (torch.zeros_like(x) - enc._mean) / enc._std)
    if ctx.has("note"):
        naive_note_ig(ctx)
    if ctx.has("metadata"):
        schema = ctx.model.encoders["metadata"].schema
        naive_tensor_ig(ctx, "metadata", "values", torch.tensor([schema.baseline_row()], dtype=torch.float32))
    if ctx.has("spectrum"):
        naive_tensor_ig(ctx, "spectrum", "spectrum", ctx.model.encoders["spectrum"].mean.unsqueeze(0))
    naive_shapley(ctx)


# ---- the benchmark ------------------------------------------------------------------------------------------------------

def demo_cases(cohort: str, n: int, root: Path | None = None) -> list[Case]:
    root = root or REPO / "assets" / "cases" / cohort
    folders = sorted(p for p in root.iterdir() if p.is_dir())[:n] if root.is_dir() else []
    if not folders:
        raise FileNotFoundError(f"no demo cases under {root}.")
    return [Case.from_folder(f) for f in folders]


def _main_package(paths: Sequence[Path]) -> Path:
    for preferred in ("mmtm", "gated", "concat"):
        for p in paths:
            if p.name == preferred:
                return p
    return paths[0]


def bench_cohort(cohort: str, n_cases: int, repeats: int, memory_cases: int, models_root: Path | None = None,
                 log: Callable[[str], None] = logger.info) -> dict[str, Any]:
    from .compare import compare_variants
    from .explain import explain_case
    from .report import make_report

    root = (models_root or REPO / "assets" / "models") / cohort
    paths = discover_packages(root)
    if not paths:
        raise FileNotFoundError(f"no model packages under {root}.")
    cases = demo_cases(cohort, n_cases)
    T = Timer(repeats)
    rss0 = rss_mb()

    # package load: cold = every encoder built and read; warm = frozen encoders already in the process pool
    main = _main_package(paths)
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        cold = load_package(main, share_encoders=False)
        T.samples.setdefault("load_cold", []).append(time.perf_counter() - t)
        del cold
    pkg = load_package(main)
    T.run("load_warm", lambda: load_package(main))
    variants = [load_package(p) for p in paths]
    rss_all = rss_mb()
    log(f"[{cohort}] {len(paths)} packages loaded; resident memory {rss_all:.0f} MiB")

    fused = [v for v in variants if v.variant != "unimodal"]
    # once per process: the explainers' lazily imported libraries (Grad-CAM, Captum) out of the figures
    explain_case(pkg, cases[0], parts=FULL_PARTS, shapley_samples=0)
    ig_deltas: dict[str, list[float]] = {}
    for case in cases:
        T.run("forward_plain", lambda: plain_forward(pkg, case))
        T.run("preprocess", lambda: pkg.prepare([case]))
        inputs, present, _ = pkg.prepare([case])
        for m in pkg.modalities:
            if inputs.get(m) is not None:
                with torch.inference_mode():
                    T.run(f"encoder:{m}", lambda: pkg.model.encoders[m](**inputs[m]))
        with torch.inference_mode():
            feats = pkg.model.encode(inputs, present)
            T.run("fusion_and_head", lambda: pkg.model.fuse_and_classify(feats, present))
        T.run("predict_T30", lambda: pkg.predict(case, mc_samples=30))
        T.run("predict_T30_naive", lambda: naive_predict(pkg, case, 30), repeats=1)
        ex = T.run("explain_full", lambda: explain_case(pkg, case, parts=FULL_PARTS, shapley_samples=0), repeats=1)
        for part, sec in ex.timings.items():
            if part != "total":
                T.samples.setdefault(f"explain_part:{part}", []).append(sec)
        for method, info in ex.image_attribution_info.items():
            ig_deltas.setdefault(method, []).append(info.get("relative_delta"))
        T.run("explain_full_naive", lambda: naive_explain(pkg, case), repeats=1)
        if case.image is not None and "image" in pkg.modalities:  # the previous image IG (16 steps on pixels)
            px = explain_case(pkg, case, parts=("image_ig_pixels",), shapley_samples=0)
            T.samples.setdefault("explain_part:image_ig_pixels", []).append(px.timings["image_ig_pixels"])
        more = explain_case(pkg, case, parts=("cam", "lesion_context", "table", "faithfulness"),
                            cam_methods=("gradcam", "gradcam++", "layercam", "eigencam"))
        for part, sec in more.timings.items():
            if part.startswith("cam:") or part in ("lesion_context", "faithfulness"):
                T.samples.setdefault(f"explain_part:{part}", []).append(sec)
            if part == "table":
                T.samples.setdefault("explain_part:table_with_shapley_sampling_40", []).append(sec)
        for k in (2, 4):
            if len(fused) >= k:
                T.run(f"compare_{k}", lambda: compare_variants(fused[:k], case, explain=False), repeats=1)
                T.run(f"compare_{k}_naive", lambda: compare_variants(fused[:k], case, explain=False, share_encoders=False),
                      repeats=1)
        T.run("compare_all", lambda: compare_variants(variants, case, explain=False), repeats=1)
        T.run("compare_all_naive", lambda: compare_variants(variants, case, explain=False, share_encoders=False), repeats=1)
        rep = make_report(pkg, case, ex)
        T.run("report_pdf", rep.pdf, repeats=1)
        T.run("report_html", rep.html, repeats=1)

    # int8 deployment option: speed and agreement with the float model on the same cases
    q = load_package(main, int8=True)
    agree, dmax = [], 0.0
    for case in cases:
        T.run("forward_plain_int8", lambda q=q, case=case: plain_forward(q, case))
        T.run("predict_T30_int8", lambda q=q, case=case: q.predict(case, mc_samples=30))
        a, b = q.predict(case), pkg.predict(case)
        agree.append(a.label == b.label)
        dmax = max(dmax, float(np.abs(a.calibrated - b.calibrated).max()))
    del q

    # memory over many explained cases (leaked hooks, caches or graphs show here)
    parts = ("cam", "lesion_context", "note", "table", "spectrum", "modality")
    warm = min(10, max(2, memory_cases // 10))
    curve = []
    for i in range(memory_cases):
        explain_case(pkg, cases[i % len(cases)], parts=parts, shapley_samples=0)
        if i + 1 == warm:
            gc.collect()
            base = rss_mb()
        if (i + 1) % max(1, memory_cases // 10) == 0:
            gc.collect()
            curve.append([i + 1, round(rss_mb(), 1)])
    gc.collect()
    end = rss_mb()

    def goal_ratios(med):
        return {
            "predict_T30_over_forward": med("predict_T30") / med("forward_plain"),
            "naive_predict_over_predict": med("predict_T30_naive") / med("predict_T30"),
            "explain_over_forward": med("explain_full") / med("forward_plain"),
            "naive_explain_over_explain": med("explain_full_naive") / med("explain_full"),
            "compare_all_over_one_variant": med("compare_all") / med("predict_T30"),
            "naive_compare_all_over_compare_all": med("compare_all_naive") / med("compare_all"),
            "int8_speedup_forward": med("forward_plain") / med("forward_plain_int8"),
            "int8_speedup_predict": med("predict_T30") / med("predict_T30_int8"),
        }

    ratios = {k: round(v, 3) for k, v in {**goal_ratios(T.median),
                                          "memory_growth_percent": 100 * (end - base) / base}.items()}
    # the same time ratios in CPU time (steadier than wall time while other jobs share the machine)
    ratios_cpu = {k: round(v, 3) for k, v in goal_ratios(T.cpu_median).items()}
    return {
        "cohort": cohort, "main_package": main.name, "packages": len(paths), "cases": len(cases), "repeats": repeats,
        "stages": T.summary(), "ratios": ratios, "ratios_cpu_time": ratios_cpu,
        "int8": {"label_agreement_with_float": float(np.mean(agree)), "max_probability_change": round(dmax, 4),
                 "cases": len(cases)},
        "image_ig_relative_convergence_delta": {k: [round(float(x), 4) for x in v if x is not None] for k, v in ig_deltas.items()},
        "goals": {k: {"limit": g, "value": ratios[k], "met": (ratios[k] <= g) if k != "naive_explain_over_explain" else ratios[k] >= g,
                      **({"value_cpu_time": ratios_cpu[k]} if k in ratios_cpu else {})}
                  for k, g in GOALS.items()},
        "memory_mib": {"before_loading": round(rss0, 1), "holding_every_package": round(rss_all, 1),
                       "after_warm_up": round(base, 1), f"after_{memory_cases}_explained_cases": round(end, 1),
                       "curve": curve, "peak": round(peak_rss_mb(), 1), "explained_cases": memory_cases},
    }


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_1min": round(os.getloadavg()[0], 2)}


def run_bench(cohorts: Sequence[str], n_cases: int, repeats: int, memory_cases: int,
              log: Callable[[str], None] = logger.info) -> dict[str, Any]:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    out = {"what": __doc__.split("\n\n")[0], "machine": machine(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "cohorts": {}}
    for c in cohorts:
        out["cohorts"][c] = bench_cohort(c, n_cases, repeats, memory_cases, log=log)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def table(result: dict[str, Any]) -> str:
    lines = []
    for c, r in result["cohorts"].items():
        lines.append(f"\n{c} (main package {r['main_package']}, {r['cases']} cases, {r['packages']} packages)")
        lines.append(f"  {'stage':44s} {'median ms':>10s} {'p90 ms':>10s}")
        for k, v in r["stages"].items():
            lines.append(f"  {k:44s} {v['median_ms']:10.1f} {v['p90_ms']:10.1f}")
        lines.append(f"  ratios:{'':35s} {'wall':>10s} {'CPU time':>10s}")
        for k, v in r["ratios"].items():
            g = r["goals"].get(k)
            mark = "" if g is None else (f"  goal {'<=' if k != 'naive_explain_over_explain' else '>='} {g['limit']}: "
                                         + ("met" if g["met"] else "MISSED"))
            c = r.get("ratios_cpu_time", {}).get(k)
            lines.append(f"    {k:40s} {v:10.3f} {'' if c is None else f'{c:10.3f}':>10s}{mark}")
        m = r["memory_mib"]
        n = m["explained_cases"]
        after = m[f"after_{n}_explained_cases"]
        lines.append(f"  memory MiB: holding every package {m['holding_every_package']}, after warm-up {m['after_warm_up']}, "
                     f"after {n} explained cases {after}")
    return "\n".join(lines)
