"""The dual-expert lesion gate by evidence kind (issue 15 §3/§4): mean w_l on lesion-, context-, note-,
metadata-decided and ambiguous cases, every case of the cohort (not only the faithfulness table's first
``--per-kind``), plus balanced accuracy on the cohort, each with a bootstrap interval; several packages on
the same cases, with paired differences against the first package given (``--baseline``, default the first).

    python scripts/dual_gates.py --seed 9932 --n 600 PACKAGE_DIR [PACKAGE_DIR ...] [--json out.json]
    python scripts/dual_gates.py --seed 0 --split val PACKAGE_DIR ...      # the training cohort's validation split

Each case is predicted with its mask (``to_case(with_mask=True)``). The image streams are computed once per
case and shared: the global stream by every package (the same frozen backbone), the lesion stream by the
packages whose crop is the same (margin, ``lesion_mask_fill``); the note encoder (frozen MiniLM, one
fingerprint) once; each package then runs its own gate, fusion and head (``Package.predict(features=...)``).
``--check K``: also predict the first K cases through ``Package.predict`` alone and assert the same labels and
gates (the shared path is only a shortcut).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

from core import load_package
from core.encoders import encoder_config
from core.encoders.base import ModalityFeatures
from core.package.predictor import prepare_batch

KINDS = ("lesion", "context", "note", "metadata", None)
BOOT = 1000


def _stream_key(enc) -> str:
    return json.dumps({"margin": enc.margin, "fill": getattr(enc, "lesion_mask_fill", "none")}, sort_keys=True)


def shared_features(pkgs, cases) -> list[dict[str, ModalityFeatures]]:
    """Per package: {"image": its dual encoder's output, "note": the note features} for the present rows."""
    encs = [p.model.encoders["image"] for p in pkgs]
    back = {json.dumps(encoder_config(e.backbone), sort_keys=True, default=str) for e in encs}
    if len(back) != 1:
        raise SystemExit("the packages' global backbones differ: nothing to share.")
    note_fp = {p.encoder_fingerprint("note") for p in pkgs}
    if len(note_fp) != 1 or None in note_fp:
        raise SystemExit("the packages' note encoders differ: nothing to share.")
    g = None
    lesion: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for e in encs:
            k = _stream_key(e)
            if k in lesion:
                continue
            x = e.prepare([e.case_input(c)[0] for c in cases])
            if g is None:
                f = e.backbone(x["pixels"])
                g = {"g_pooled": f.pooled, "g_l0": f.levels[0], "g_l1": f.levels[1], "g_l2": f.levels[2], "g_tokens": f.tokens}
            f = e.local_backbone(x["local_pixels"])
            lesion[k] = {"l_pooled": f.pooled, "l_l0": f.levels[0], "l_l1": f.levels[1], "l_l2": f.levels[2],
                         "l_tokens": f.tokens, "crop_box": x["crop_box"]}
        inputs, _, _ = prepare_batch(pkgs[0].model, cases, skip={"image", "metadata"})
        note = pkgs[0].model.encoders["note"](**inputs["note"]) if inputs.get("note") is not None else None
        out = []
        for e in encs:
            d = {"image": e(**g, **lesion[_stream_key(e)])}
            if note is not None:
                d["note"] = note
            out.append(d)
    return out


def _ci(values: np.ndarray) -> list[float]:
    return [float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))]


def summarise(gates: np.ndarray, pred: np.ndarray, true: np.ndarray, ev: np.ndarray, rng_seed: int = 0) -> dict:
    rng = np.random.default_rng(rng_seed)
    n = len(true)
    out = {"n": int(n), "balanced_accuracy": float(balanced_accuracy_score(true, pred)),
           "accuracy": float((pred == true).mean())}
    boots = [rng.integers(0, n, n) for _ in range(BOOT)]
    out["balanced_accuracy_ci95"] = _ci(np.array([balanced_accuracy_score(true[b], pred[b]) for b in boots]))
    for k in KINDS:
        name = k or "ambiguous"
        sel = ev == str(k)
        out[f"n_{name}"] = int(sel.sum())
        if not sel.any():
            out[f"w_l_{name}"] = None
            continue
        w = gates[sel]
        out[f"w_l_{name}"] = float(np.nanmean(w))
        out[f"w_l_sd_{name}"] = float(np.nanstd(w))
        out[f"w_l_ci95_{name}"] = _ci(np.array([np.nanmean(w[rng.integers(0, len(w), len(w))]) for _ in range(BOOT)]))
        out[f"accuracy_{name}"] = float((pred[sel] == true[sel]).mean())
    if out["n_lesion"] and out["n_context"]:
        wl, wc = gates[ev == "lesion"], gates[ev == "context"]
        out["w_l_difference"] = out["w_l_lesion"] - out["w_l_context"]
        out["w_l_difference_ci95"] = _ci(np.array([np.nanmean(wl[rng.integers(0, len(wl), len(wl))])
                                                   - np.nanmean(wc[rng.integers(0, len(wc), len(wc))]) for _ in range(BOOT)]))
    return out


def measure_all(pkgs, items, batch: int = 32, check: int = 0) -> list[dict]:
    gates = [[] for _ in pkgs]
    preds = [[] for _ in pkgs]
    true = []
    for s in range(0, len(items), batch):
        part = items[s:s + batch]
        cases = [it.to_case(with_mask=True) for it in part]
        feats = shared_features(pkgs, cases)
        for j, (p, f) in enumerate(zip(pkgs, feats)):
            for pr in p.predict(cases, mc_samples=1, features=f):
                gates[j].append(float(pr.diagnostics.get("image_lesion_gate", np.nan)))
                preds[j].append(pr.label)
        true += [it.label for it in part]
    if check:
        cases = [it.to_case(with_mask=True) for it in items[:check]]
        for j, p in enumerate(pkgs):
            ref = p.predict(cases, mc_samples=1)
            assert [r.label for r in ref] == preds[j][:check], p.name
            ref_g = np.array([float(r.diagnostics["image_lesion_gate"]) for r in ref])
            assert np.allclose(ref_g, gates[j][:check], atol=1e-4), (p.name, ref_g, gates[j][:check])
        print(f"check: the shared path gives Package.predict's labels and gates on {check} cases", flush=True)
    ev = np.array([str(it.evidence) for it in items])
    true = np.array(true)
    out = [summarise(np.array(g), np.array(pr), true, ev) for g, pr in zip(gates, preds)]
    for r, pr in zip(out, preds):
        r["_pred"] = np.array(pr)
    return out


def paired(base_pred: np.ndarray, pred: np.ndarray, true: np.ndarray, rng_seed: int = 1) -> dict:
    """New minus baseline balanced accuracy on the same cases, paired bootstrap."""
    rng = np.random.default_rng(rng_seed)
    n = len(true)
    d = []
    for _ in range(BOOT):
        b = rng.integers(0, n, n)
        d.append(balanced_accuracy_score(true[b], pred[b]) - balanced_accuracy_score(true[b], base_pred[b]))
    return {"balanced_accuracy_difference": float(balanced_accuracy_score(true, pred) - balanced_accuracy_score(true, base_pred)),
            "balanced_accuracy_difference_ci95": _ci(np.array(d))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("packages", nargs="+")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--split", choices=("val", "test", "train"), help="a split of the cohort (seed 0: only val/test)")
    ap.add_argument("--kinds", nargs="*", help="only these evidence kinds (e.g. lesion context)")
    ap.add_argument("--baseline", nargs="*", default=None,
                    help="per package, the index of its baseline package (paired bacc difference); default 0")
    ap.add_argument("--check", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.seed == 0 and args.split not in ("val", "test"):
        raise SystemExit("seed 0 is the training cohort's seed: measure on its val (or test) split only.")
    torch.set_num_threads(args.threads)
    from core.data.cohorts.dermatology import generate_dermatology

    t = time.perf_counter()
    cohort = generate_dermatology(n=args.n, seed=args.seed, workers=1 if args.threads == 1 else min(2, os.cpu_count() or 1))
    items = cohort.split(args.split) if args.split else list(cohort.items)
    if args.kinds:
        items = [it for it in items if str(it.evidence) in args.kinds]
    print(f"cohort seed {args.seed} n {args.n}{' split ' + args.split if args.split else ''}: {len(items)} cases "
          f"({time.perf_counter() - t:.0f} s)", flush=True)
    pkgs = [load_package(p) for p in args.packages]
    t = time.perf_counter()
    res = measure_all(pkgs, items, check=args.check)
    true = np.array([it.label for it in items])
    base = [int(b) for b in args.baseline] if args.baseline else [0] * len(pkgs)
    out = {}
    for i, (path, r) in enumerate(zip(args.packages, res)):
        if base[i] != i:
            r.update({"baseline": args.packages[base[i]], **paired(res[base[i]]["_pred"], r["_pred"], true)})
        out[path] = {k: v for k, v in r.items() if not k.startswith("_")}
        r = out[path]
        diff = r.get("w_l_difference")
        print(f"{path}: w_l lesion {r['w_l_lesion']:.3f} (n {r['n_lesion']}) context {r['w_l_context']:.3f} "
              f"(n {r['n_context']}) diff {diff:+.3f} {np.round(r['w_l_difference_ci95'], 3).tolist()}; "
              f"bacc {r['balanced_accuracy']:.3f} {np.round(r['balanced_accuracy_ci95'], 3).tolist()} (n {r['n']})",
              flush=True)
    print(f"measured in {time.perf_counter() - t:.0f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seed": args.seed, "n": args.n, "split": args.split, "kinds": args.kinds, "cases": len(items),
                       "bootstrap": BOOT, "packages": out}, f, indent=2)


if __name__ == "__main__":
    main()
