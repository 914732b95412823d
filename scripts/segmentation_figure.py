"""The README's automatic-segmentation figure: mean Dice and IoU of ``auto_lesion_mask`` against the
dermatology generator's own lesion masks.

    python scripts/segmentation_figure.py --n 200 --seed 0

The segmentation is not trained (skin-colour distance + Otsu + morphology), so any generator seed is fair;
the default is seed 0, the first 200 cases, 224 px (the size the suites train at). Prints one JSON line:
n, seed, mean / median / 5th-percentile Dice and IoU, and the share of cases with Dice below 0.5.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from core.data.cohorts.dermatology import draw_case, sample_labels
from core.imaging import auto_lesion_mask, segmentation_quality


def measure(n: int = 200, seed: int = 0, image_size: int = 224) -> dict:
    labels = sample_labels(n, seed)
    dice, iou = [], []
    t0 = time.perf_counter()
    for i, label in enumerate(labels):
        case = draw_case(seed, i, label, image_size=image_size)
        q = segmentation_quality(auto_lesion_mask(case["image"]), np.asarray(case["mask"], bool))
        dice.append(q["dice"])
        iou.append(q["iou"])
    d, j = np.asarray(dice), np.asarray(iou)
    return {"n": n, "seed": seed, "image_size": image_size,
            "dice_mean": round(float(d.mean()), 3), "dice_median": round(float(np.median(d)), 3),
            "dice_p5": round(float(np.percentile(d, 5)), 3), "iou_mean": round(float(j.mean()), 3),
            "iou_median": round(float(np.median(j)), 3), "share_dice_below_0.5": round(float((d < 0.5).mean()), 3),
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=224)
    args = ap.parse_args(argv)
    result = measure(args.n, args.seed, args.image_size)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
