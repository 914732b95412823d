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

``--tta-logits`` runs every package on the 8 symmetries of each image, two ways: ``pixels`` (each view
encoded from its pixels by the shipped encoder, as ``core.package.tta`` does for a new case) and ``maps``
(the view applied to the frozen block-10 map, the augmentation stage 1 was trained with; cheaper). Logits
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
    views = list(VIEWS)
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
                xv, l0v, l1v = (x0, l0, l1) if v == "identity" else frozen_part(enc, apply_view(px, v))
                feats[("pixels", v)] = enc.from_stages([trained_part(enc, xv)], (l0v, l1v))
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


def tta_select(args) -> None:
    raise NotImplementedError("step 2 is being written")


def tta_score(args) -> None:
    raise NotImplementedError("step 3 is being written")


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
