"""Grad-CAM family against the published HAM10000 lesion masks, per package and explainer setting.

    python scripts/ham10000_gradcam.py --data ../shared/data/ham10000 --split test [--n 140] [--seed 1616]
        [--packages gated unimodal_image] [--variants gradcam@last "gradcam++@last×early"]

Choose settings on ``--split val``; report on ``--split test`` once. Per package and variant, over a
class-stratified sample of the split's images (seeded):
* lesion mass ratio: heatmap mass share inside the real mask / the mask's area share (1 = no preference);
* pointing game: the map's maximum lies in the lesion; chance = the lesion's area share;
* border: mass share in the outer 5% band of the image vs that band's area share;
* vignette: mass share on dark corner pixels (outside the inscribed ellipse, grey < 50 of 255: the
  dermoscope's black vignette, a known shortcut) vs their area share, over the images that have one;
* outside / inside: mean activation per pixel outside the lesion / inside it, the measure of Tschandl et al.
  (Nature Medicine 2020: 0.32 for most classes, 0.48 for actinic keratoses).
Variants (``VARIANTS``): the old default (Grad-CAM, last stage), the methods on the last stage, the shipped
HAM10000 default (Grad-CAM++ on the last stage x LayerCAM on the early stage, ``core.explain.gradcam``) and two
sharpness controls (the lesion mass ratio grows when a map is sharpened, the pointing game does not): the
default's square root (about the contrast of a single map) and the squared last-stage Grad-CAM++. Also the
resolution ceiling: the mask itself pooled to each layer's grid and upsampled the same way. The target
class is the predicted one (what the dashboard shows). Writes ``gradcam_masks.json`` next to the packages
(test split) or ``gradcam_masks_<split>.json`` and prints the README table.
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
# key -> (method, layer, transform of the [0, 1] map, role); layers as in core.explain.gradcam.cam_layer_names
VARIANTS: dict[str, tuple[str, str, str | None, str]] = {
    "gradcam@last": ("gradcam", "last stage", None, "old default (baseline)"),
    "gradcam++@last": ("gradcam++", "last stage", None, "method"),
    "layercam@last": ("layercam", "last stage", None, "method"),
    "hirescam@last": ("hirescam", "last stage", None, "method"),
    "layercam@early": ("layercam", "early stage", None, "layer"),
    "gradcam++@last×early": ("gradcam++", "last × early stage", None, "HAM10000 default"),
    "sqrt(gradcam++@last×early)": ("gradcam++", "last × early stage", "sqrt", "sharpness control"),
    "square(gradcam++@last)": ("gradcam++", "last stage", "square", "sharpness control"),
}
DEFAULT_VARIANTS = list(VARIANTS)


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


def sample_items(items: list, labels: list[str], n: int, seed: int) -> list:
    """``n`` items, class-stratified (rare classes get their share), then filled at random; seeded."""
    rng = np.random.default_rng(seed)
    per_class = max(1, n // len(labels))
    sample = []
    for lab in labels:
        pool = [it for it in items if it.label == lab]
        sample += [pool[i] for i in sorted(rng.choice(len(pool), min(per_class, len(pool)), replace=False))]
    rest = [it for it in items if it not in sample]
    return sample + [rest[i] for i in sorted(rng.choice(len(rest), max(0, n - len(sample)), replace=False))]


def transform(cam: np.ndarray, how: str | None) -> np.ndarray:
    cam = np.clip(cam, 0, None)
    return cam if how is None else np.sqrt(cam) if how == "sqrt" else cam ** 2


def ceiling(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The mask pooled to a layer's grid (area average) and upsampled bilinearly, as a CAM is."""
    import cv2

    small = cv2.resize(mask.astype(np.float32), (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("FUSIONLENS_HAM10000"), help="the HAM10000 folder (with masks)")
    ap.add_argument("--models", default=str(ROOT / "assets" / "models" / "ham10000"))
    ap.add_argument("--split", default="test", choices=("val", "test"), help="val to choose a setting, test to report")
    ap.add_argument("--packages", nargs="*", help="package names (default: every package with an image input)")
    ap.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    ap.add_argument("--n", type=int, default=140, help="images, class-stratified (default 140)")
    ap.add_argument("--seed", type=int, default=1616)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if not args.data:
        ap.error("--data (or FUSIONLENS_HAM10000) is required")
    import torch

    torch.set_num_threads(args.threads)
    from core.case import load_image, load_mask
    from core.data.cohorts.ham10000 import load_ham10000_cohort
    from core.explain.context import ExplainContext
    from core.explain.gradcam import describe_cam, image_cam
    from core.package import discover_packages, load_package

    cohort = load_ham10000_cohort(args.data)
    items = [it for it in cohort.split(args.split) if it.mask_path is not None]
    data = []
    for it in sample_items(items, cohort.labels, args.n, args.seed):
        img = load_image(Path(it.image_path))
        data.append((it, it.to_case(with_mask=False), load_mask(Path(it.mask_path), img.size),
                     np.asarray(img.convert("L"), dtype=np.float32)))
    paths = [p for p in discover_packages(Path(args.models)) if not args.packages or p.name in args.packages]
    variants = {k: VARIANTS[k] for k in args.variants}
    out = {"split": args.split, "n_images": len(data), "seed": args.seed, "target": "predicted class",
           "tschandl_2020_out_in": TSCHANDL,
           "variants": {k: {"method": m, "layer": la, "transform": tr, "role": role,
                            "description": describe_cam(m, la) + (f", {tr}" if tr else "")}
                        for k, (m, la, tr, role) in variants.items()},
           "packages": {}}
    t0 = time.perf_counter()
    for path in paths:
        pkg = load_package(path)
        if "image" not in pkg.modalities:
            continue
        t = time.perf_counter()
        rows: dict[str, list[dict]] = {k: [] for k in variants}
        grids: dict[str, tuple[int, int]] = {}
        for it, case, mask, grey in data:
            ctx = ExplainContext(pkg, case)
            maps: dict[tuple[str, str], np.ndarray] = {}
            for k, (method, layer, how, _) in variants.items():
                if (method, layer) not in maps:
                    maps[method, layer] = image_cam(ctx, method, layer)
                r = case_metrics(transform(maps[method, layer], how), mask, grey)
                if r:
                    r["label"] = it.label
                rows[k].append(r)
            if "ceiling" not in out:
                grids = grids or layer_grids(ctx)
                for name, grid in grids.items():
                    r = case_metrics(ceiling(mask, grid), mask, grey)
                    if r:
                        r["label"] = it.label
                    rows.setdefault(f"ceiling@{name}", []).append(r)
        out["packages"][path.name] = {k: summarise(rs, cohort.labels) for k, rs in rows.items() if not k.startswith("ceiling@")}
        if "ceiling" not in out:
            out["ceiling"] = {k.split("@", 1)[1]: {"grid": list(grids[k.split("@", 1)[1]]), **summarise(rs, cohort.labels)}
                              for k, rs in rows.items() if k.startswith("ceiling@")}
        line = "  ".join(f"{k} {s['median_mass_ratio']:.2f}/{s['pointing_game']:.2f}" for k, s in out["packages"][path.name].items())
        print(f"{path.name:22s} {line}  (chance {next(iter(out['packages'][path.name].values()))['pointing_chance']:.2f}; "
              f"{time.perf_counter() - t:.0f} s)", flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    target = Path(args.models) / ("gradcam_masks.json" if args.split == "test" else f"gradcam_masks_{args.split}.json")
    target.write_text(json.dumps(out, indent=2))
    print(markdown(out))
    return 0


def layer_grids(ctx) -> dict[str, tuple[int, int]]:
    """Each CAM layer's map size (rows, columns) for this case's input."""
    import torch

    enc = ctx.model.encoders["image"]
    shapes, hooks = {}, []
    for name, mod in enc.cam_layers().items():
        hooks.append(mod.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[-2:]))))
    try:
        with torch.no_grad():
            enc(ctx.inputs["image"]["pixels"])
    finally:
        for h in hooks:
            h.remove()
    return shapes


def markdown(out: dict) -> str:
    """Two tables: every variant for the best package under the default (and the ceiling), then every package
    under the old and the new default."""
    def cells(s: dict) -> str:
        ak = s["per_class"].get("akiec", {}).get("median_out_in", float("nan"))
        return (f"{s['median_mass_ratio']:.2f} ({s['mass_ratio_iqr'][0]:.2f}–{s['mass_ratio_iqr'][1]:.2f}) "
                f"| {s['pointing_game']:.2f} ({s['pointing_chance']:.2f}) | {s['border_mass']:.3f} / {s['border_area']:.3f} "
                f"| {s['vignette_mass']:.3f} / {s['vignette_area']:.3f} ({s['n_vignette']}) | {s['median_out_in']:.2f} ({ak:.2f}) |")
    head = ("| median lesion mass ratio (IQR) | pointing game (chance) | border mass / area | vignette mass / area (n) "
            "| outside / inside activation (akiec) |")
    pk = out["packages"]
    new = next((k for k, v in out["variants"].items() if v["role"] == "HAM10000 default"), None)
    old = next((k for k, v in out["variants"].items() if v["role"].startswith("old default")), None)
    best = max(pk, key=lambda p: pk[p][new]["pointing_game"] + pk[p][new]["median_mass_ratio"] / 10) if new and pk else None
    lines = []
    if best:
        lines += [f"Variants, package `{best}`:", "", f"| variant {head}", "|---|---|---|---|---|---|"]
        for k, s in pk[best].items():
            lines.append(f"| {out['variants'][k]['description']} ({out['variants'][k]['role']}) | {cells(s)}")
        for name, s in out.get("ceiling", {}).items():
            lines.append(f"| the mask itself at the {name}'s {s['grid'][0]} × {s['grid'][1]} grid (ceiling) | {cells(s)}")
        lines.append("")
    for k in (old, new):
        if k is None:
            continue
        lines += [f"{out['variants'][k]['description']} ({out['variants'][k]['role']}):", "", f"| model {head}",
                  "|---|---|---|---|---|---|"]
        lines += [f"| `{p}` | {cells(v[k])}" for p, v in pk.items()]
        lines += [f"| Tschandl et al. 2020 (anchor) | — | — | — | — | {TSCHANDL['most classes']:.2f} ({TSCHANDL['akiec']:.2f}) |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
