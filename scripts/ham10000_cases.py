"""Pick the real HAM10000 demo cases from the lesion-grouped *test* split (never training images).

    python scripts/ham10000_cases.py --data ../shared/data/ham10000 [--model assets/models/ham10000/gated]

Two per class (7 classes -> 14 cases): one the model gets right with confidence and does not refer ("clear"),
and one it gets wrong or refers ("hard" / "referred"); the first case is a clear one. Each folder holds the
image (200 x 150: the distributed JPEG decoded, saved as PNG), the published lesion mask, metadata.json (age,
sex, site, the true label and the kind; no note) and SOURCE.txt, the dataset's attribution and licence.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCE = """Demo cases from the HAM10000 dataset (test split of FusionLens' lesion-grouped split; never used for training).

Licence: Creative Commons Attribution-NonCommercial 4.0 (CC BY-NC 4.0), as distributed by the ISIC archive.
Non-commercial research use only. Images downsized from 600 x 450 to 200 x 150 (bilinear, JPEG quality 75);
masks thresholded at 128 after resizing; nothing else changed.

Please cite:
- Tschandl P., Rosendahl C., Kittler H. "The HAM10000 dataset, a large collection of multi-source dermatoscopic
  images of common pigmented skin lesions." Scientific Data 5, 180161 (2018). doi:10.1038/sdata.2018.161
- Codella N. et al. "Skin Lesion Analysis Toward Melanoma Detection 2018: A Challenge Hosted by the International
  Skin Imaging Collaboration (ISIC)." arXiv:1902.03368 (2019).
- Lesion masks: Tschandl P. et al. "Human-computer collaboration for skin cancer recognition." Nature Medicine 26,
  1229-1234 (2020).

Research use only, not a medical device.

This case (folder <- HAM10000 image_id / lesion_id, diagnosis, how chosen):
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("FUSIONLENS_HAM10000"))
    ap.add_argument("--model", default=str(ROOT / "assets" / "models" / "ham10000" / "gated"))
    ap.add_argument("--out", default=str(ROOT / "assets" / "cases" / "ham10000"))
    ap.add_argument("--per-class", type=int, default=20, help="candidates per class to run the model on")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.data:
        ap.error("--data (or FUSIONLENS_HAM10000) is required")
    from core.data.cohorts.ham10000 import load_ham10000_cohort
    from core.package import load_package

    cohort = load_ham10000_cohort(args.data, notes="none")
    pkg = load_package(args.model)
    rng = np.random.default_rng(args.seed)
    picked = []
    for lab in cohort.labels:
        pool = [it for it in cohort.split("test") if it.label == lab and it.mask_path is not None]
        cand = [pool[i] for i in sorted(rng.choice(len(pool), min(args.per_class, len(pool)), replace=False))]
        preds = pkg.predict([it.to_case(with_mask=False) for it in cand])     # one batch
        rows = [(it, p.label == lab, bool(p.refer), float(p.calibrated.max()), p.label) for it, p in zip(cand, preds)]
        clear = sorted([r for r in rows if r[1] and not r[2]], key=lambda r: -r[3])
        hard = sorted([r for r in rows if not r[1]], key=lambda r: -r[3]) or sorted([r for r in rows if r[2]], key=lambda r: r[3])
        if clear:
            picked.append((clear[0], "clear"))
        if hard:
            r = hard[0]
            picked.append((r, "referred" if r[2] else "hard"))
    # the first case shown is a clear one: clear cases first (most confident first), then the rest by class
    picked.sort(key=lambda x: (x[1] != "clear", -x[0][3] if x[1] == "clear" else 0))
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    listing = []
    for i, ((it, _ok, referred, conf, pred), kind) in enumerate(picked, 1):
        d = out / f"ham-{i:02d}-{it.label}-{kind}"
        d.mkdir()
        Image.open(it.image_path).convert("RGB").save(d / "image.png")      # the decoded JPEG, losslessly
        shutil.copyfile(it.mask_path, d / "mask.png")
        meta = {k: v for k, v in it.metadata.items() if v is not None}
        (d / "metadata.json").write_text(json.dumps({**meta, "label": it.label, "kind": kind}, indent=2))
        listing.append(f"- {d.name} <- {it.case_id} / {it.extras['lesion_id']}, {it.label}, {kind} "
                       f"(model {Path(args.model).name} predicted {pred}, calibrated confidence {conf:.2f}"
                       f"{', referred' if referred else ''})")
        (d / "SOURCE.txt").write_text(SOURCE + listing[-1] + "\n")   # the attribution travels with each case
    print("\n".join(listing))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
