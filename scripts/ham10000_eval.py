"""Evaluate every HAM10000 package on the ISIC 2018 Task 3 test images (an external test set) and print the
README table beside the lesion-grouped HAM10000 test split.

    python scripts/ham10000_eval.py --data ../shared/data/isic2018_task3_test [--models assets/models/ham10000]

The image encoder is frozen and shared by every package, so its outputs on the ISIC images are computed
once (the feature cache) and each package then runs its own fusion and head: the same numbers as
``python -m core evaluate --model DIR --data ...`` per package, in one pass. Nothing here is tuned: the
calibration temperature and referral threshold are the packages' own (fitted on HAM10000 validation).
Writes ``external_isic2018.json`` next to the packages.

Test-time augmentation and validation-chosen combinations (issue 16 follow-up), in three steps:

    python scripts/ham10000_eval.py --data ISIC --ham PATH/ham10000 --tta-logits val   # per-view logits, cached
    python scripts/ham10000_eval.py --data ISIC --ham PATH/ham10000 --tta-select       # choices on validation only
    python scripts/ham10000_eval.py --data ISIC --ham PATH/ham10000 --tta-logits test isic --tta-score  # once

``--tta-logits`` runs every package on the symmetries of each image, two ways: ``pixels`` (each view
encoded from its pixels by the shipped encoder, as ``core.package.tta`` does for a new case; by default the
4 views that keep width and height, since each costs a whole encoder pass on a shared CPU) and ``maps`` (all
8 views applied to the frozen block-10 map, the augmentation stage 1 was trained with; cheaper). Logits
are cached under ``~/.cache/fusionlens/tta`` (never in the repository). ``--tta-select`` reads validation
logits only and writes ``suite_inference.json``; ``--tta-score`` applies those choices to the HAM10000
test split and the ISIC images once and writes ``external_isic2018_tta.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("FUSIONLENS_ISIC2018"), help="ISIC 2018 Task 3 test folder")
    ap.add_argument("--models", default=str(ROOT / "assets" / "models" / "ham10000"))
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--packages", nargs="*", help="only these packages, merged into an existing external_isic2018.json")
    ap.add_argument("--ham", default=os.environ.get("FUSIONLENS_HAM10000"), help="HAM10000 folder (TTA study)")
    ap.add_argument("--tta-logits", nargs="*", choices=["val", "test", "isic"], help="cache per-view logits of these sets")
    ap.add_argument("--tta-select", action="store_true", help="choose TTA / combination on validation -> suite_inference.json")
    ap.add_argument("--tta-score", action="store_true", help="score the validation choices on test + ISIC once")
    ap.add_argument("--tta-pixel-views", nargs="*", default=["identity", "hflip", "vflip", "rot180"],
                    help="views encoded from pixels (each costs a whole encoder pass; the map views are all 8)")
    ap.add_argument("--tta-levels", nargs="*", choices=list(("pixels", "maps")), default=["pixels", "maps"],
                    help="compute only these levels' views (the plain identity view always)")
    ap.add_argument("--tta-limit", type=int, help="first N images only (a smoke run; its own cache file)")
    args = ap.parse_args()
    if not args.data:
        ap.error("--data (or FUSIONLENS_ISIC2018) is required")
    import torch
    if args.tta_logits is not None or args.tta_select or args.tta_score:
        if not args.ham:
            ap.error("--ham (or FUSIONLENS_HAM10000) is required for the TTA study")
        torch.set_num_threads(args.threads)
        for which in args.tta_logits or []:
            tta_logits(args, which)
        if args.tta_select:
            tta_select(args)
        if args.tta_score:
            tta_score(args)
        return 0

    torch.set_num_threads(args.threads)
    from core.data.loaders import load_dataset
    from core.package import discover_packages, load_package
    from core.training.dataset import build_split
    from core.training.train import evaluate_split

    cohort = load_dataset(args.data)
    items = cohort.split("test")
    out: dict[str, dict] = {"data": {"source": Path(args.data).name, "n": len(items),
                                     "class_counts": cohort.class_counts("test")}, "packages": {}}
    target = Path(args.models) / "external_isic2018.json"
    if args.packages and target.is_file():
        out["packages"] = json.loads(target.read_text())["packages"]
    t0 = time.perf_counter()
    for path in [p for p in discover_packages(Path(args.models)) if not args.packages or p.name in args.packages]:
        pkg = load_package(path)
        t = time.perf_counter()
        split = build_split(pkg.model, items, pkg.labels, tag="isic2018-task3-test")
        m, _, _ = evaluate_split(pkg.model, split, pkg.labels, pkg.temperature, pkg.mc_samples,
                                 n_boot=args.n_boot)
        test = json.loads((path / "metrics.json").read_text())
        out["packages"][path.name] = {"modalities": pkg.modalities, "isic2018": m,
                                      "ham10000_test": {k: test[k] for k in ("n", "balanced_accuracy", "ece",
                                                                             "ece_before_calibration", "sensitivity",
                                                                             "accuracy_vs_referred")}}
        print(f"{path.name:22s} ISIC bacc {m['balanced_accuracy']['value']:.3f}  HAM test bacc "
              f"{test['balanced_accuracy']['value']:.3f}  ({time.perf_counter() - t:.0f} s)", flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    target.write_text(json.dumps(out, indent=2))
    print(markdown(out))
    return 0


# ---- TTA study ---------------------------------------------------------------------------------------------
MODES = ("pixels", "maps")


def _tta_cache() -> Path:
    from core.training.dataset import cache_root

    return cache_root() / "tta"


def _study_items(args, which: str):
    from core.data.cohorts.ham10000 import load_ham10000_cohort
    from core.data.loaders import load_dataset

    if which == "isic":
        c = load_dataset(args.data)
        return c, c.split("test")
    c = load_ham10000_cohort(args.ham)
    return c, c.split(which)


def _packages(args):
    from core.package import discover_packages, load_package

    return {p.name: load_package(p) for p in discover_packages(Path(args.models))}


def _logits_file(which: str, limit: int | None = None) -> Path:
    return _tta_cache() / f"logits-{which}{f'-first{limit}' if limit else ''}.safetensors"


def tta_logits(args, which: str) -> None:
    """Every package's deterministic + MC logits on the 8 views of each image, pixels and maps (see the docstring)."""
    import torch
    from safetensors.torch import save_file

    from core.package.predictor import run
    from core.package.tta import VIEWS, apply_view
    from core.training.finetune import frozen_part, trained_part

    _, items = _study_items(args, which)
    items = items[:args.tta_limit] if args.tta_limit else items
    pkgs = _packages(args)
    shas = {n: p.sha256 for n, p in pkgs.items()}
    enc = next(p for p in pkgs.values() if "image" in p.modalities).inference_model.encoders["image"]
    views = list(VIEWS) if "maps" in args.tta_levels else [v for v in VIEWS if v in args.tta_pixel_views]
    pixel_views = args.tta_pixel_views if "pixels" in args.tta_levels else ["identity"]
    out: dict[str, list] = {}
    t0 = time.perf_counter()
    t_enc = 0.0
    for start in range(0, len(items), 64):
        cases = [it.to_case(with_mask=False) for it in items[start:start + 64]]
        t = time.perf_counter()
        with torch.inference_mode():
            px = enc.prepare([c.image for c in cases])["pixels"]
            x0, l0, l1 = frozen_part(enc, px)
            feats = {}
            for v in views:
                if v in pixel_views:
                    xv, l0v, l1v = (x0, l0, l1) if v == "identity" else frozen_part(enc, apply_view(px, v))
                    feats[("pixels", v)] = enc.from_stages([trained_part(enc, xv)], (l0v, l1v))
                if "maps" in args.tta_levels:
                    feats[("maps", v)] = feats[("pixels", v)] if v == "identity" else \
                        enc.from_stages([trained_part(enc, apply_view(x0, v))], (l0, l1))
        t_enc += time.perf_counter() - t
        for name, pkg in pkgs.items():
            extra = {}
            if "note" in pkg.modalities:
                from core.package import prepare_batch

                inp, _, _ = prepare_batch(pkg.model, cases, skip={m for m in pkg.modalities if m != "note"})
                with torch.inference_mode():
                    extra["note"] = pkg.inference_model.encoders["note"](**inp["note"])
            for (mode, v), f in feats.items():
                if "image" not in pkg.modalities and not (mode == "pixels" and v == "identity"):
                    continue
                d, m, _, _ = run(pkg, cases, None, start, {"image": f, **extra} if "image" in pkg.modalities else extra)
                for key, val in (("det", d.logits), ("mc", m.logits.half()), ("lv", m.log_var.half())):
                    out.setdefault(f"{name}|{mode}|{v}|{key}", []).append(val)
        print(f"  {which}: {min(start + 64, len(items))}/{len(items)} ({time.perf_counter() - t0:.0f} s, "
              f"encoder views {t_enc:.0f} s)", flush=True)
    tensors = {k: torch.cat(v, dim=-2 if k.endswith("|det") else (-1 if k.endswith("|lv") else -2)).contiguous()
               for k, v in out.items()}
    labels = next(iter(pkgs.values())).labels
    tensors["labels"] = torch.tensor([labels.index(it.label) for it in items])
    f = _logits_file(which, args.tta_limit)
    f.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(f), metadata={"ids": json.dumps([it.case_id for it in items]), "sha256": json.dumps(shas),
                                         "seconds": str(round(time.perf_counter() - t0, 1)),
                                         "encoder_seconds": str(round(t_enc, 1)), "n": str(len(items))})
    print(f"wrote {f} ({time.perf_counter() - t0:.0f} s)", flush=True)


def _load_logits(which: str, limit: int | None = None):
    """-> (labels [N], {(package, mode, view): (det [N, K], mc [T, N, K], lv [T, N])} in float32, metadata)."""
    from safetensors import safe_open

    f = _logits_file(which, limit)
    if not f.is_file():
        raise SystemExit(f"{f} is missing: run --tta-logits {which} first.")
    raw: dict[tuple[str, str, str], dict] = {}
    with safe_open(str(f), "pt") as fh:
        meta = fh.metadata()
        y = fh.get_tensor("labels")
        for k in fh.keys():
            if k != "labels":
                name, mode, view, part = k.split("|")
                raw.setdefault((name, mode, view), {})[part] = fh.get_tensor(k).float()
    logits = {k: (v["det"], v["mc"], v["lv"]) for k, v in raw.items()}
    return y, logits, {k: json.loads(v) if k in ("ids", "sha256") else v for k, v in meta.items()}


@dataclass
class System:
    """A way to predict: members (packages), each with its TTA views (level: pixels or maps) combined by
    mean logits or mean probabilities and its own temperature; members' calibrated log-probabilities
    averaged (log-linear pool) and rescaled by ``t_pool``; ``tau`` the logit (class-prior) adjustment:
    the scores minus tau * log(training prior)."""
    members: tuple[str, ...]
    views: tuple[str, ...] = ("identity",)
    level: str = "pixels"
    combine: str = "mean_logits"
    temps: dict = field(default_factory=dict)
    t_pool: float = 1.0
    tau: float = 0.0

    def name(self) -> str:
        who = self.members[0] if len(self.members) == 1 else f"average of {len(self.members)}"
        tta = "no TTA" if self.views == ("identity",) else f"TTA {len(self.views)} {self.level} views, {self.combine}"
        return f"{who}, {tta}" + (f", tau {self.tau:g}" if self.tau else "")


def _member_scores(logits, name: str, sysm: System, temperature: float, raw: bool = False, mc: bool = True):
    """One member's log-probabilities (det [N, K], mc [T, N, K] or None) under the system's TTA; ``raw``: T = 1."""
    import torch

    views = sysm.views if (name, sysm.level, sysm.views[-1]) in logits else ("identity",)   # image-less package
    level = sysm.level if views != ("identity",) else "pixels"
    t = 1.0 if raw else temperature
    out = []
    for part in (0, 1) if mc else (0,):
        x = torch.stack([logits[(name, level, v)][part] for v in views])
        if sysm.combine == "mean_logits":
            out.append(torch.log_softmax(x.mean(0) / t, -1))
        else:
            out.append(torch.softmax(x / t, -1).mean(0).clamp_min(1e-12).log())
    return out[0], (out[1] if mc else None)


def _system_scores(logits, sysm: System, log_prior, raw: bool = False, mc: bool = True):
    import torch

    parts = [_member_scores(logits, n, sysm, sysm.temps.get(n, 1.0), raw, mc) for n in sysm.members]
    det = torch.stack([p[0] for p in parts]).mean(0)
    m = torch.stack([p[1] for p in parts]).mean(0) if mc else None
    if raw:
        return det, m
    adj = sysm.tau * log_prior
    return (torch.log_softmax((det - adj) / sysm.t_pool, -1),
            torch.log_softmax((m - adj) / sysm.t_pool, -1) if mc else None)


def _fit_scale(scores, y) -> float:
    """The T minimising NLL of softmax(scores / T) (``core.uncertainty.fit_temperature``)."""
    from core.uncertainty import fit_temperature

    return fit_temperature(scores, y)


def _fit_system(logits, sysm: System, y, log_prior) -> System:
    """Temperatures on these (validation) logits: each member's under its TTA (1-D search for mean_probs,
    the closed-form-free LBFGS fit for mean_logits), then the pool's after averaging and the tau shift."""
    import numpy as np
    import torch

    temps = {}
    for n in sysm.members:
        if sysm.combine == "mean_logits":
            temps[n] = _fit_scale(_mean_logits(logits, n, sysm), y)
        else:
            grid = np.exp(np.linspace(np.log(0.3), np.log(6.0), 241))
            nll = [float(torch.nn.functional.nll_loss(_member_scores(logits, n, sysm, float(t), mc=False)[0], y))
                   for t in grid]
            temps[n] = float(grid[int(np.argmin(nll))])
    fitted = System(sysm.members, sysm.views, sysm.level, sysm.combine, temps, 1.0, sysm.tau)
    if len(sysm.members) > 1 or sysm.tau:
        det, _ = _system_scores(logits, fitted, log_prior, mc=False)
        fitted.t_pool = _fit_scale(det, y)
    return fitted


def _mean_logits(logits, name: str, sysm: System):
    import torch

    views = sysm.views if (name, sysm.level, sysm.views[-1]) in logits else ("identity",)
    level = sysm.level if views != ("identity",) else "pixels"
    return torch.stack([logits[(name, level, v)][0] for v in views]).mean(0)


def _scores_metrics(logits, sysm: System, y, log_prior, labels, n_boot: int = 0) -> dict:
    import torch

    from core.training.metrics import classification_metrics
    from core.uncertainty import decompose

    det, mc = _system_scores(logits, sysm, log_prior)
    raw, _ = _system_scores(logits, sysm, log_prior, raw=True)
    ent = decompose(mc, torch.zeros(mc.shape[:2]), 1.0).normalised_entropy
    yy = y.numpy()
    if n_boot:
        m = classification_metrics(yy, det.exp().numpy(), raw.exp().numpy(), ent.numpy(), labels, n_boot=n_boot)
    else:
        from sklearn.metrics import balanced_accuracy_score

        from core.uncertainty import expected_calibration_error

        p = det.exp().numpy()
        m = {"balanced_accuracy": {"value": float(balanced_accuracy_score(yy, p.argmax(1)))},
             "ece": {"value": expected_calibration_error(p, yy)}}
    m["nll"] = float(torch.nn.functional.nll_loss(det, y))
    m["entropy"] = ent.numpy()
    return m


def _crossfit_ece(logits, sysm: System, y, log_prior, seed: int = 1717) -> float:
    """Validation ECE with the temperatures fitted on the other half (two folds; an in-sample ECE flatters)."""
    import numpy as np

    from core.uncertainty import expected_calibration_error

    idx = np.random.default_rng(seed).permutation(len(y))
    halves = (idx[: len(y) // 2], idx[len(y) // 2:])
    eces = []
    for a, b in (halves, halves[::-1]):
        sub = {k: (d[a], m[:, a], v[:, a]) for k, (d, m, v) in logits.items()}
        test = {k: (d[b], m[:, b], v[:, b]) for k, (d, m, v) in logits.items()}
        fitted = _fit_system(sub, sysm, y[a], log_prior)
        det, _ = _system_scores(test, fitted, log_prior, mc=False)
        eces.append(expected_calibration_error(det.exp().numpy(), y[b].numpy()))
    return float(np.mean(eces))


TTA_CONFIGS = [("identity",), ("identity", "hflip", "vflip", "rot180"),
               ("identity", "hflip", "vflip", "rot180", "transpose", "rot90", "rot270", "antitranspose")]


def tta_select(args) -> None:
    """Step 2, validation only: which TTA (level, views, combine) helps the image packages; logit adjustment;
    a suite average; calibration. Writes suite_inference.json (the choices and the validation evidence)."""
    import numpy as np
    import torch

    y, logits, meta = _load_logits("val", args.tta_limit)
    pkgs = _packages(args)
    labels = next(iter(pkgs.values())).labels
    prior = np.array([pkgs["concat"].config["training_data"]["class_counts"]["train"][k] for k in labels], float)
    log_prior = torch.tensor(np.log(prior / prior.sum()), dtype=torch.float32)
    image_pkgs = [n for n, p in pkgs.items() if "image" in p.modalities]
    rows, t0 = {}, time.perf_counter()
    rows_file = _tta_cache() / "select_val_rows.json"
    if rows_file.is_file() and not args.tta_limit and json.loads(rows_file.read_text()).get("_sha256") == meta["sha256"]:
        rows = json.loads(rows_file.read_text())     # step 1 on these validation logits is done: reuse it
    rows.pop("_sha256", None)
    # 1. TTA configurations, every image package, one temperature each refitted on validation
    for views in TTA_CONFIGS if not rows else ():
        for level in (MODES if len(views) > 1 else ("pixels",)):
            for comb in (("mean_logits", "mean_probs") if len(views) > 1 else ("mean_logits",)):
                key = f"{len(views)}|{level}|{comb}"
                if ("unimodal_image", level, views[-1]) not in logits:
                    continue    # views not computed (pixel transposes: --tta-pixel-views)
                per = {}
                for n in image_pkgs:
                    sysm = _fit_system(logits, System((n,), views, level, comb), y, log_prior)
                    m = _scores_metrics(logits, sysm, y, log_prior, labels)
                    per[n] = {"bacc": m["balanced_accuracy"]["value"], "nll": m["nll"], "temperature": sysm.temps[n],
                              "ece_crossfit": _crossfit_ece(logits, System((n,), views, level, comb), y, log_prior)}
                rows[key] = per
                b = np.mean([r["bacc"] for r in per.values()])
                print(f"  {key:28s} mean val bacc {b:.4f}  nll {np.mean([r['nll'] for r in per.values()]):.4f}  "
                      f"ece(cross-fit) {np.mean([r['ece_crossfit'] for r in per.values()]):.4f}  concat "
                      f"{per['concat']['bacc']:.4f}  unimodal_image {per['unimodal_image']['bacc']:.4f}  "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    rows_file.write_text(json.dumps({**rows, "_sha256": meta["sha256"]}, indent=1))
    # the rule, fixed before looking: the configuration with the best mean validation balanced accuracy over the 15
    # image packages; among configurations within 0.002 of it, the cheapest (fewest pixel passes, then map views)
    best = max(float(np.mean([r["bacc"] for r in per.values()])) for per in rows.values())

    def cost(key):
        n, level, comb = key.split("|")
        return (int(n) if level == "pixels" else 1, int(n), comb != "mean_logits")

    ok = [k for k, per in rows.items() if float(np.mean([r["bacc"] for r in per.values()])) >= best - 0.002]
    chosen = min(ok, key=cost)
    n, level, comb = chosen.split("|")
    views = next(v for v in TTA_CONFIGS if len(v) == int(n))
    print(f"chosen TTA: {chosen} (best mean {best:.4f})", flush=True)
    # 2. logit (class-prior) adjustment, one tau for the suite, on top of the chosen TTA
    taus = [round(t, 2) for t in np.arange(-0.6, 1.21, 0.1)]
    tau_rows = {}
    for tau in taus:
        b = []
        for name in image_pkgs:
            sysm = _fit_system(logits, System((name,), views, level, comb, tau=tau), y, log_prior)
            b.append(_scores_metrics(logits, sysm, y, log_prior, labels)["balanced_accuracy"]["value"])
        tau_rows[tau] = float(np.mean(b))
        print(f"  tau {tau:+.1f}: mean val bacc {tau_rows[tau]:.4f}", flush=True)
    tau_best = max(taus, key=lambda t: (round(tau_rows[t], 3), -abs(t)))   # ties (to 0.001) to the smaller shift
    # 3. the fusion variant chosen on validation under the chosen treatment, and suite averages of the top k
    # the candidates of the original choice: the default fusion packages (the template-note reproduction is not one)
    fusion = [nm for nm in image_pkgs if nm not in ("unimodal_image", "gated_template_note")]
    single = {nm: _fit_system(logits, System((nm,), views, level, comb, tau=tau_best), y, log_prior) for nm in image_pkgs}
    single_b = {nm: _scores_metrics(logits, sysm, y, log_prior, labels)["balanced_accuracy"]["value"]
                for nm, sysm in single.items()}
    ranked = sorted(fusion, key=lambda nm: -single_b[nm])
    ens = {}
    for k in (2, 3, 5, 8, len(fusion)):
        sysm = _fit_system(logits, System(tuple(ranked[:k]), views, level, comb, tau=tau_best), y, log_prior)
        m = _scores_metrics(logits, sysm, y, log_prior, labels)
        ens[k] = {"members": list(sysm.members), "bacc": m["balanced_accuracy"]["value"], "nll": m["nll"],
                  "ece_crossfit": _crossfit_ece(logits, System(tuple(ranked[:k]), views, level, comb, tau=tau_best), y,
                                                log_prior), "t_pool": sysm.t_pool, "temps": sysm.temps}
        print(f"  average of top {k}: val bacc {ens[k]['bacc']:.4f} nll {ens[k]['nll']:.4f} ece(cross-fit) "
              f"{ens[k]['ece_crossfit']:.4f}", flush=True)
    k_best = max(ens, key=lambda k: (round(ens[k]["bacc"], 3), -k))
    best_single = ranked[0]
    # the same choice under the TTA alone (no logit adjustment: the calibrated probabilities keep their calibration)
    plain_choice = max(fusion, key=lambda nm: rows["1|pixels|mean_logits"][nm]["bacc"])
    tta_choice = max(fusion, key=lambda nm: rows[chosen][nm]["bacc"])
    adj_ece = {nm: _crossfit_ece(logits, System((nm,), views, level, comb, tau=tau_best), y, log_prior)
               for nm in dict.fromkeys([best_single, tta_choice, "concat", "unimodal_image"])}
    print(f"  plain choice {plain_choice}, TTA choice {tta_choice}, TTA + tau choice {best_single}; cross-fitted val "
          f"ECE with tau: {adj_ece}", flush=True)
    use_average = ens[k_best]["bacc"] > single_b[best_single] + 0.005    # an average must beat one package clearly
    doc = {"format": "fusionlens-suite-inference/1",
           "fitted_on": "HAM10000 validation split only (1,509 images, lesion-grouped); chosen before the test split "
                        "and the ISIC 2018 images were scored",
           "script": "python scripts/ham10000_eval.py --data ISIC --ham HAM --tta-logits val --tta-select",
           "tta": {"views": list(views), "combine": comb, "level": level,
                   "rule": "best mean validation balanced accuracy over the 15 image packages; within 0.002 the cheapest"},
           "logit_adjustment": {"tau": tau_best, "log_prior_train": [round(float(v), 6) for v in log_prior],
                                "rule": "scores - tau * log(training class prior), one tau for the suite, best mean "
                                        "validation balanced accuracy (ties to 0.001 -> smaller |tau|)"},
           "chosen_plain": plain_choice,
           "chosen_tta": {"members": [tta_choice], "rule": "the best default fusion package on validation under the TTA "
                                                          "alone (no logit adjustment)"},
           "chosen": {"kind": "average" if use_average else "single",
                      "members": ens[k_best]["members"] if use_average else [best_single],
                      "t_pool": ens[k_best]["t_pool"] if use_average else single[best_single].t_pool,
                      "rule": "the best fusion package on validation under the chosen treatment; an average of the "
                              "top k replaces it only if its validation balanced accuracy is higher by > 0.005"},
           "packages": {}, "evidence": {"tta_configurations": {
               k: {"mean_val_balanced_accuracy": round(float(np.mean([r["bacc"] for r in per.values()])), 4),
                   "mean_val_nll": round(float(np.mean([r["nll"] for r in per.values()])), 4),
                   "mean_val_ece_crossfit": round(float(np.mean([r["ece_crossfit"] for r in per.values()])), 4),
                   "improved_packages": sum(per[nm]["bacc"] > rows["1|pixels|mean_logits"][nm]["bacc"] for nm in per)}
               for k, per in rows.items()},
               "tau_mean_val_balanced_accuracy": tau_rows,
               "averages": {k: {kk: (round(v, 4) if isinstance(v, float) else v) for kk, v in e.items() if kk != "temps"}
                            for k, e in ens.items()},
               "val_ece_crossfit_with_tau": {nm: round(v, 4) for nm, v in adj_ece.items()},
               "crossfit_seed": 1717}}
    for nm in pkgs:
        p = pkgs[nm]
        entry = {"package_sha256": p.sha256}
        if nm in single:
            from core.uncertainty import decompose

            sysm = single[nm]
            thr = {}
            for key, sy in (("tta_referral_threshold", System((nm,), views, level, comb, {nm: sysm.temps[nm]})),
                            ("tta_adjusted_referral_threshold", sysm)):
                _, mc = _system_scores(logits, sy, log_prior)
                thr[key] = float(np.quantile(decompose(mc, torch.zeros(mc.shape[:2]), 1.0).normalised_entropy.numpy(), 0.8))
            entry.update({"tta_temperature": sysm.temps[nm], "pool_temperature": sysm.t_pool, **thr,
                          "val_balanced_accuracy": {"plain": round(rows["1|pixels|mean_logits"][nm]["bacc"], 4),
                                                    "tta": round(rows[chosen][nm]["bacc"], 4),
                                                    "tta_tau": round(single_b[nm], 4)},
                          "val_ece_crossfit": {"plain": round(rows["1|pixels|mean_logits"][nm]["ece_crossfit"], 4),
                                               "tta": round(rows[chosen][nm]["ece_crossfit"], 4)}})
        doc["packages"][nm] = entry
    if use_average:
        doc["chosen"]["temperatures"] = ens[k_best]["temps"]
    target = _settings_path(args)
    target.write_text(json.dumps(doc, indent=2))
    print(json.dumps({k: doc[k] for k in ("tta", "logit_adjustment", "chosen")}, indent=1))
    print(f"wrote {target}", flush=True)


def _settings_path(args) -> Path:
    """suite_inference.json beside the packages; a smoke run (--tta-limit) keeps its own in the cache."""
    return _tta_cache() / "suite_inference-smoke.json" if args.tta_limit else Path(args.models) / "suite_inference.json"


def _chosen_systems(doc: dict, pkgs) -> dict:
    """The systems suite_inference.json describes: every package plain (its own temperature), every image package
    with the chosen TTA (+ tau), and the chosen system."""
    t, a = doc["tta"], doc["logit_adjustment"]
    out = {}
    for nm, e in doc["packages"].items():
        out[(nm, "plain")] = System((nm,), temps={nm: pkgs[nm].temperature})
        if "tta_temperature" in e:
            out[(nm, "tta")] = System((nm,), tuple(t["views"]), t["level"], t["combine"], {nm: e["tta_temperature"]})
            out[(nm, "tta_adj")] = System((nm,), tuple(t["views"]), t["level"], t["combine"], {nm: e["tta_temperature"]},
                                          e["pool_temperature"], a["tau"])
    c = doc["chosen"]
    temps = c.get("temperatures") or {m: doc["packages"][m]["tta_temperature"] for m in c["members"]}
    out[("chosen", "tta_adj")] = System(tuple(c["members"]), tuple(t["views"]), t["level"], t["combine"], temps,
                                        c["t_pool"], a["tau"])
    out[("chosen", "plain")] = out[(doc["chosen_plain"], "plain")]
    out[("chosen", "tta")] = out[(doc["chosen_tta"]["members"][0], "tta")]
    return out


def tta_score(args) -> None:
    """Step 3, once: the validation choices (read from suite_inference.json) on the HAM10000 test split and the ISIC
    images, every package plain and with TTA, bootstrap intervals, the paired gain over image-only."""
    import numpy as np
    import torch


    doc = json.loads(_settings_path(args).read_text())
    pkgs = _packages(args)
    for nm, e in doc["packages"].items():
        if pkgs[nm].sha256 != e["package_sha256"]:
            raise SystemExit(f"{nm} was retrained after suite_inference.json was fitted: refit first.")
    labels = next(iter(pkgs.values())).labels
    log_prior = torch.tensor(doc["logit_adjustment"]["log_prior_train"], dtype=torch.float32)
    systems = _chosen_systems(doc, pkgs)
    out = {"settings": {k: doc[k] for k in ("tta", "logit_adjustment", "chosen")}, "n_boot": args.n_boot, "sets": {}}
    for which in ("test", "isic"):
        y, logits, meta = _load_logits(which, args.tta_limit)
        res, preds = {}, {}
        headline = {"concat", "unimodal_image", "chosen"}
        for (nm, how), sysm in systems.items():
            # full bootstrap for the rows the README quotes; 200 resamples elsewhere (the CPU is shared)
            m = _scores_metrics(logits, sysm, y, log_prior, labels, n_boot=args.n_boot if nm in headline else 200)
            m["n_boot"] = args.n_boot if nm in headline else 200
            m.pop("entropy")
            preds[(nm, how)] = _system_scores(logits, sysm, log_prior, mc=False)[0].argmax(1).numpy()
            res.setdefault(nm, {})[how] = {k: m[k] for k in ("balanced_accuracy", "macro_f1", "auroc", "ece",
                                                             "ece_before_calibration", "error_detection_auroc",
                                                             "sensitivity", "accuracy_vs_referred", "nll", "n_boot")}
            print(f"  [{which}] {nm} {how}: bacc {m['balanced_accuracy']['value']:.3f}", flush=True)
        yy = y.numpy()
        gains = {}
        rng = np.random.default_rng(0)
        boots = [rng.integers(0, len(yy), len(yy)) for _ in range(args.n_boot)]
        for nm in ("concat", "chosen"):
            for how in ("plain", "tta", "tta_adj"):
                gains[f"{nm}|{how}"] = _paired_gain(yy, preds[(nm, how)], preds[("unimodal_image", how)], boots)
            for how in ("tta", "tta_adj"):                   # the treatment's own effect, same package, same cases
                gains[f"{nm}|{how}-plain"] = _paired_gain(yy, preds[(nm, how)], preds[(nm, "plain")], boots)
        out["sets"][which] = {"n": int(len(yy)), "seconds_logits": meta.get("seconds"), "results": res, "gains": gains}
        print(f"[{which}] " + "  ".join(f"{nm}: {r['plain']['balanced_accuracy']['value']:.3f}"
                                       f"->{r.get('tta', r['plain'])['balanced_accuracy']['value']:.3f}"
                                       for nm, r in res.items() if "plain" in r), flush=True)
        print(f"[{which}] chosen {res['chosen']['tta']['balanced_accuracy']}  gains {gains}", flush=True)
    target = _tta_cache() / "external-smoke.json" if args.tta_limit else Path(args.models) / "external_isic2018_tta.json"
    target.write_text(json.dumps(out, indent=2))
    print(markdown_tta(out))


def print_tta_table(args) -> None:
    print(markdown_tta(json.loads((Path(args.models) / "external_isic2018_tta.json").read_text())))


def _paired_gain(y, pred_a, pred_b, boots) -> dict:
    """Balanced accuracy of a minus b on the same cases, with a paired percentile bootstrap interval."""
    from sklearn.metrics import balanced_accuracy_score

    import numpy as np

    d = balanced_accuracy_score(y, pred_a) - balanced_accuracy_score(y, pred_b)
    bs = [balanced_accuracy_score(y[i], pred_a[i]) - balanced_accuracy_score(y[i], pred_b[i]) for i in boots]
    return {"value": float(d), "ci95": [float(np.percentile(bs, 2.5)), float(np.percentile(bs, 97.5))]}


def markdown_tta(out: dict) -> str:
    """The README table: per package, ISIC and HAM10000 test, plain -> TTA -> TTA + logit adjustment."""
    def ci(m):
        return f"{m['value']:.3f} ({m['ci95'][0]:.3f}–{m['ci95'][1]:.3f})"

    def arrow(r, key, fmt="{:.3f}"):
        return " → ".join(fmt.format(r[h][key]["value"]) for h in ("plain", "tta", "tta_adj") if h in r)

    t, te = out["sets"]["isic"]["results"], out["sets"]["test"]["results"]
    lines = ["| model | ISIC bal. acc. plain → TTA (95% CI) | ISIC bal. acc. TTA + adjustment | ISIC ECE after calibration "
             "plain → TTA → + adj. | HAM10000 test bal. acc. plain → TTA → + adj. | HAM10000 test ECE plain → TTA → + adj. |",
             "|---|---|---|---|---|---|"]
    rows = [n for n in t if n != "chosen" and "tta" in t[n]]
    for nm in sorted(rows, key=lambda n: -t[n]["tta"]["balanced_accuracy"]["value"]):
        r, h = t[nm], te[nm]
        lines.append(f"| `{nm}` | {ci(r['plain']['balanced_accuracy'])} → {ci(r['tta']['balanced_accuracy'])} "
                     f"| {r['tta_adj']['balanced_accuracy']['value']:.3f} | {arrow(r, 'ece')} "
                     f"| {arrow(h, 'balanced_accuracy')} | {arrow(h, 'ece')} |")
    return "\n".join(lines)


def markdown(out: dict) -> str:
    def ci(m):
        return f"{m['value']:.3f} ({m['ci95'][0]:.3f}–{m['ci95'][1]:.3f})"

    lines = ["| model | inputs | HAM10000 test bal. acc. (95% CI) | ISIC 2018 bal. acc. (95% CI) | ISIC mel / bcc / akiec sens. "
             "| ISIC ECE before → after | ISIC acc. at 20% referred |", "|---|---|---|---|---|---|---|"]
    for name, r in sorted(out["packages"].items(), key=lambda kv: -kv[1]["isic2018"]["balanced_accuracy"]["value"]):
        i, h = r["isic2018"], r["ham10000_test"]
        s = i["sensitivity"]
        lines.append(f"| `{name}` | {', '.join(r['modalities'])} | {ci(h['balanced_accuracy'])} | {ci(i['balanced_accuracy'])} "
                     f"| {s['mel']:.2f} / {s['bcc']:.2f} / {s['akiec']:.2f} | {i['ece_before_calibration']['value']:.3f} → "
                     f"{i['ece']['value']:.3f} | {i['accuracy_vs_referred']['accuracy'][4]:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
