"""Grad-CAM against the published HAM10000 lesion masks, per package, on the lesion-grouped test split.

    python scripts/ham10000_gradcam.py --data ../shared/data/ham10000 [--n 100] [--packages gated unimodal_image]

Per package, over a class-stratified sample of test images (seeded; never used for training or tuning):
* lesion mass ratio: Grad-CAM mass share inside the real mask / the mask's area share (1 = no preference);
* pointing game: the map's maximum lies in the lesion; chance = the lesion's area share;
* border: mass share in the outer 5% band of the image vs that band's area share;
* vignette: mass share on dark corner pixels (outside the inscribed ellipse, grey < 50 of 255: the
  dermoscope's black vignette, a known shortcut) vs their area share, over the images that have one;
* outside / inside: mean activation per pixel outside the lesion / inside it, the measure of Tschandl et al.
  (Nature Medicine 2020: 0.32 for most classes, 0.48 for actinic keratoses).
The target class is the predicted one (what the dashboard shows). Writes ``gradcam_masks.json`` next to the
packages and prints the README table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TSCHANDL = {"most classes": 0.32, "akiec": 0.48}


def regions(shape: tuple[int, int], grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    b = max(1, round(0.05 * min(h, w)))
    border = np.zeros(shape, bool)
    border[:b], border[-b:], border[:, :b], border[:, -b:] = True, True, True, True
    yy, xx = np.mgrid[0:h, 0:w]
    outside = ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2 > 1.0
    return border, outside & (grey < 50)


def case_metrics(cam: np.ndarray, mask: np.ndarray, grey: np.ndarray) -> dict[str, float]:
    import cv2

    if cam.shape != mask.shape:
        cam = cv2.resize(cam.astype(np.float32), (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
    cam = np.clip(cam, 0, None)
    total = float(cam.sum())
    area = float(mask.mean())
    border, vignette = regions(mask.shape, grey)
    if total <= 0 or area <= 0 or area >= 1:
        return {}
    top = cam >= cam.max() - 1e-9
    inside, outside = float(cam[mask].mean()), float(cam[~mask].mean())
    return {"mass_ratio": float(cam[mask].sum() / total) / area, "hit": float(mask[top].mean() >= 0.5), "area": area,
            "border_mass": float(cam[border].sum() / total), "border_area": float(border.mean()),
            "vignette_mass": float(cam[vignette].sum() / total), "vignette_area": float(vignette.mean()),
            "out_in": outside / inside if inside > 0 else float("nan")}


def summarise(rows: list[dict], labels: list[str]) -> dict:
    ok = [r for r in rows if r]
    a = lambda k, rs=ok: np.array([r[k] for r in rs], float)  # noqa: E731
    vig = [r for r in ok if r["vignette_area"] > 0.01]
    out = {"n": len(ok), "median_mass_ratio": float(np.median(a("mass_ratio"))),
           "mass_ratio_iqr": [float(np.percentile(a("mass_ratio"), 25)), float(np.percentile(a("mass_ratio"), 75))],
           "pointing_game": float(a("hit").mean()), "pointing_chance": float(a("area").mean()),
           "border_mass": float(a("border_mass").mean()), "border_area": float(a("border_area").mean()),
           "n_vignette": len(vig),
           "vignette_mass": float(a("vignette_mass", vig).mean()) if vig else float("nan"),
           "vignette_area": float(a("vignette_area", vig).mean()) if vig else float("nan"),
           "median_out_in": float(np.nanmedian(a("out_in")))}
    per = {}
    for lab in labels:
        rs = [r for r in ok if r["label"] == lab]
        if rs:
            per[lab] = {"n": len(rs), "median_out_in": float(np.nanmedian(a("out_in", rs))),
                        "median_mass_ratio": float(np.median(a("mass_ratio", rs))), "pointing_game": float(a("hit", rs).mean())}
    out["per_class"] = per
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("FUSIONLENS_HAM10000"), help="the HAM10000 folder (with masks)")
    ap.add_argument("--models", default=str(ROOT / "assets" / "models" / "ham10000"))
    ap.add_argument("--packages", nargs="*", help="package names (default: every package with an image input); "
                    "merged into an existing gradcam_masks.json of the same sample")
    ap.add_argument("--n", type=int, default=100, help="test images, class-stratified (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not args.data:
        ap.error("--data (or FUSIONLENS_HAM10000) is required")
    import torch

    torch.set_num_threads(args.threads)
    from core.case import load_image, load_mask
    from core.data.cohorts.ham10000 import load_ham10000_cohort
    from core.explain.context import ExplainContext
    from core.explain.gradcam import image_cam
    from core.package import discover_packages, load_package

    cohort = load_ham10000_cohort(args.data)
    test = [it for it in cohort.split("test") if it.mask_path is not None]
    rng = np.random.default_rng(args.seed)
    per_class = max(1, args.n // len(cohort.labels))
    sample = []
    for lab in cohort.labels:                    # stratified: rare classes get their share
        pool = [it for it in test if it.label == lab]
        sample += [pool[i] for i in sorted(rng.choice(len(pool), min(per_class, len(pool)), replace=False))]
    rest = [it for it in test if it not in sample]
    sample += [rest[i] for i in sorted(rng.choice(len(rest), max(0, args.n - len(sample)), replace=False))]
    data = []
    for it in sample:
        img = load_image(Path(it.image_path))
        data.append((it, it.to_case(with_mask=False), load_mask(Path(it.mask_path), img.size),
                     np.asarray(img.convert("L"), dtype=np.float32)))
    paths = [p for p in discover_packages(Path(args.models)) if not args.packages or p.name in args.packages]
    out = {"n_images": len(data), "seed": args.seed, "tschandl_2020_out_in": TSCHANDL, "packages": {}}
    target = Path(args.models) / "gradcam_masks.json"
    if args.packages and target.is_file():          # a few packages: merged into the table of the same sample
        old = json.loads(target.read_text())
        if (old.get("n_images"), old.get("seed")) == (len(data), args.seed):
            out["packages"] = old["packages"]
    t0 = time.perf_counter()
    for path in paths:
        pkg = load_package(path)
        if "image" not in pkg.modalities:
            continue
        t = time.perf_counter()
        rows = []
        for it, case, mask, grey in data:
            ctx = ExplainContext(pkg, case)
            r = case_metrics(image_cam(ctx), mask, grey)
            if r:
                r["label"] = it.label
            rows.append(r)
        out["packages"][path.name] = summarise(rows, cohort.labels)
        s = out["packages"][path.name]
        print(f"{path.name:22s} mass ratio {s['median_mass_ratio']:.2f}  pointing {s['pointing_game']:.2f} "
              f"(chance {s['pointing_chance']:.2f})  ({time.perf_counter() - t:.0f} s)", flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    target.write_text(json.dumps(out, indent=2))
    print(markdown(out))
    return 0


def markdown(out: dict) -> str:
    lines = ["| model | median lesion mass ratio (IQR) | pointing game (chance) | border mass / area | vignette mass / area (n) "
             "| outside / inside activation (akiec) |", "|---|---|---|---|---|---|"]
    for name, s in out["packages"].items():
        ak = s["per_class"].get("akiec", {}).get("median_out_in", float("nan"))
        lines.append(f"| `{name}` | {s['median_mass_ratio']:.2f} ({s['mass_ratio_iqr'][0]:.2f}–{s['mass_ratio_iqr'][1]:.2f}) "
                     f"| {s['pointing_game']:.2f} ({s['pointing_chance']:.2f}) | {s['border_mass']:.3f} / {s['border_area']:.3f} "
                     f"| {s['vignette_mass']:.3f} / {s['vignette_area']:.3f} ({s['n_vignette']}) | {s['median_out_in']:.2f} ({ak:.2f}) |")
    lines.append(f"| Tschandl et al. 2020 (anchor) | — | — | — | — | {TSCHANDL['most classes']:.2f} ({TSCHANDL['akiec']:.2f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
