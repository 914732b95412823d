"""Which uncertainty signal is worth a referral flag? (issue #14 §4)

    python scripts/uncertainty_signals.py --suite assets/models/dermatology --variant mmtm \
        --calib-seed 9611 --eval-seed 9612 --n 1000 [--json out.json] [--write-committee]
    python scripts/uncertainty_signals.py --suite assets/models/ham10000 --variant concat --data ../shared/data/ham10000

Dermatology (generated): calibrators are fitted on a fresh calibration seed and everything is measured on
another fresh evaluation seed (neither was used for training or tuning). HAM10000 and diabetes (real patients:
a new seed only reshuffles them): calibrators on the validation split, measures on the test split.

Signals compared for the chosen variant's prediction (error = that variant's calibrated prediction is wrong):
* ``entropy_head_mc``: normalised predictive entropy of T head-only MC-dropout samples (the shipped referral signal);
* ``mi_head_mc``: their mutual information (epistemic part);
* ``one_minus_maxprob``: 1 - the calibrated top probability (dropout off);
* ``entropy_fusion_mc``: predictive entropy with dropout on in the fusion module as well as in the head;
* ``committee_entropy``: entropy of the mean calibrated distribution of every fused variant of the suite
  (a deep-ensemble-style committee: the variants share the frozen encoders, so the extra cost is one fusion +
  head pass per variant, which the Compare page already runs);
* ``committee_disagreement``: mean KL of each variant's distribution to the committee mean (its epistemic part);
* ``committee_vote``: share of the other fused variants whose label differs from the chosen variant's label
  (the referral signal the Prediction page offers as a second opinion, core/committee.py).
Calibrators compared (ECE of the chosen variant's probabilities, and of the committee mean): none, the package's
own scalar temperature, a scalar temperature refitted on the calibration set, per-class temperatures and vector
scaling (a per-class scale and bias), each fitted by NLL on the calibration set.
Each figure comes with a percentile-bootstrap 95% interval over evaluation cases.

``--write-committee`` also writes ``<suite>/committee.json`` (read by core/committee.py): the chosen
variant, the committee, the vote threshold fitted on the CALIBRATION set alone (vote shares are k / n, so the
threshold is the cut k / n whose referred share of calibration cases is closest to the package's referral fraction)
and the evaluation set's figures. Off by default, so that a re-run for measurement overwrites nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.committee import is_member  # noqa: E402
from core.package import discover_packages, load_package  # noqa: E402
from core.training.dataset import build_split  # noqa: E402
from core.training.metrics import _bootstrap, _error_auroc  # noqa: E402
from core.training.train import predict_split  # noqa: E402
from core.uncertainty import expected_calibration_error, fit_temperature  # noqa: E402
from core.uncertainty.calibration import ece_noise_floor  # noqa: E402
from core.uncertainty.mc_dropout import entropy  # noqa: E402

T_MC = 30
REFER_FRACTION = 0.2     # the packages' own referral fraction (core/training: the threshold refers 20% of validation)


def fit_vote_threshold(vote: np.ndarray, n_others: int, fraction: float = REFER_FRACTION) -> dict:
    """The cut ``k / n_others`` (refer when the vote share >= it) whose referred share of ``vote`` (calibration
    cases) is closest to ``fraction``; ties go to the higher cut (fewer referrals)."""
    best = None
    for k in range(1, n_others + 1):
        share = float(np.mean(np.rint(vote * n_others) >= k))   # whole counts: no float rounding at the cut
        if best is None or abs(share - fraction) <= abs(best[1] - fraction) + 1e-12:   # ascending k: ties -> higher cut
            best = (k, share)
    k, share = best
    return {"min_disagreeing": k, "of": n_others, "threshold": round(k / n_others, 6),
            "rule": "refer when the share of the other variants whose label differs is >= threshold",
            "target_referred_fraction": fraction, "calibration_referred_fraction": round(share, 4)}


def fusion_mc_logits(model, split, T: int, seed: int, batch: int = 256) -> torch.Tensor:
    """[T, N, C] logits with dropout on in the fusion module and the head (encoders as deployed)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)   # nn.Dropout in the fusion draws from the global generator
    model.eval()
    model.fusion.train()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(split), batch):
                idx = torch.arange(start, min(start + batch, len(split)))
                b = split.batch(model, idx)
                feats = model.encode({m: (x if x is None or not isinstance(x, dict) else model.encoders[m](**x))
                                      for m, x in b["inputs"].items()}, b["present"])
                samples = []
                for _ in range(T):
                    fused, _ = model.fusion(feats, b["present"])
                    logits, _ = model.head(fused, 1, gen)
                    samples.append(logits[0])
                out.append(torch.stack(samples))
    finally:
        model.eval()
    return torch.cat(out, 1)


def fit_vector_scaling(logits: torch.Tensor, y: torch.Tensor, per_class_temperature_only: bool = False):
    """Per-class scale w (and bias b unless ``per_class_temperature_only``) minimising NLL of softmax(w*z + b)."""
    z = logits.detach().double()
    C = z.shape[1]
    log_w = torch.zeros(C, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(C, dtype=torch.float64, requires_grad=not per_class_temperature_only)
    params = [log_w] + ([] if per_class_temperature_only else [b])
    opt = torch.optim.LBFGS(params, lr=0.1, max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z * log_w.exp() + b, y.long()) + 1e-3 * (log_w.pow(2).sum() + b.pow(2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    w, bb = log_w.detach().exp().float(), b.detach().float()
    return lambda zz: torch.softmax(zz * w + bb, -1)


def with_ci(fn, n: int, rng_seed: int = 0, n_boot: int = 500) -> dict[str, float | list[float]]:
    rng = np.random.default_rng(rng_seed)
    return {"value": round(float(fn(np.arange(n))), 4), "ci95": [round(v, 4) for v in _bootstrap(fn, n, n_boot, rng)]}


def run_set(packages, items, labels, tag: str, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for pkg in packages:
        t = time.perf_counter()
        split = build_split(pkg.model, items, labels, tag)
        det, mc, _ = predict_split(pkg.model, split, T_MC, seed=seed)
        out[pkg.name] = {"det": det, "mc": mc, "y": split.labels, "pkg": pkg, "split": split}
        print(f"  {pkg.name}: {len(items)} cases ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", required=True, help="a trained suite folder (e.g. assets/models/dermatology)")
    ap.add_argument("--variant", required=True, help="the package whose referral signal is chosen")
    ap.add_argument("--data", help="HAM10000 folder (real data: validation -> calibration, test -> evaluation)")
    ap.add_argument("--calib-seed", type=int, default=9611)
    ap.add_argument("--eval-seed", type=int, default=9612)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--calib-n", type=int, help="generated calibration cases (default: --n); the evaluation set keeps --n")
    ap.add_argument("--json")
    ap.add_argument("--write-committee", action="store_true",
                    help="also write <suite>/committee.json (the vote threshold fitted on the calibration set)")
    args = ap.parse_args()
    pkgs = [load_package(p) for p in discover_packages(args.suite)]
    fused = [p for p in pkgs if is_member(p)]   # the same rule the Prediction page's second opinion uses
    chosen = next((p for p in pkgs if Path(p.path).name == args.variant), None)
    if chosen is None:
        ap.error(f"no package '{args.variant}' in {args.suite}.")
    committee = [p for p in fused if p is not chosen] + [chosen]
    cohort_name = chosen.cfg.cohort
    from core.data.cohorts import COHORTS

    if args.data:
        from core.data.cohorts.ham10000 import load_ham10000_cohort

        cohort = load_ham10000_cohort(args.data)
        calib_items, eval_items = cohort.split("val"), cohort.split("test")
        data = {"cohort": cohort.name, "calibration": "validation split", "evaluation": "test split"}
    elif cohort_name != "dermatology":
        # diabetes: a new seed reshuffles the same 768 real patients (only its spectra are drawn anew), so the
        # training seed's own test split is the only data these packages never saw
        spec = COHORTS.get(cohort_name)
        cohort = spec.load(n=args.n, seed=spec.default_seed)
        calib_items, eval_items = cohort.split("val"), cohort.split("test")
        data = {"cohort": spec.name, "calibration": "validation split", "evaluation": "test split"}
    else:
        spec = COHORTS.get(cohort_name)
        calib_n = args.calib_n or args.n
        calib_items = list(spec.load(n=calib_n, seed=args.calib_seed).items)
        eval_items = list(spec.load(n=args.n, seed=args.eval_seed).items)
        data = {"cohort": spec.name, "calibration": f"fresh seed {args.calib_seed}, {calib_n} cases",
                "evaluation": f"fresh seed {args.eval_seed}, {args.n} cases"}
    labels = chosen.labels
    print(f"calibration set {len(calib_items)}, evaluation set {len(eval_items)}; committee of {len(committee)}",
          file=sys.stderr)
    cal = run_set(committee, calib_items, labels, f"uncert-cal-{data['calibration']}", 1)
    ev = run_set(committee, eval_items, labels, f"uncert-eval-{data['evaluation']}", 2)
    name = chosen.name
    y_cal, y = cal[name]["y"], ev[name]["y"].numpy()
    n = len(y)

    # calibrators for the chosen variant
    T_pkg = chosen.temperature
    T_new = fit_temperature(cal[name]["det"], y_cal)
    vec = fit_vector_scaling(cal[name]["det"], y_cal)
    pct = fit_vector_scaling(cal[name]["det"], y_cal, per_class_temperature_only=True)
    z = ev[name]["det"]
    probs = {"none": torch.softmax(z, -1), "package_temperature": torch.softmax(z / T_pkg, -1),
             "refitted_temperature": torch.softmax(z / T_new, -1), "per_class_temperature": pct(z),
             "vector_scaling": vec(z)}
    # committee mean of each variant's own calibrated distribution, then one refitted temperature on top
    comm_cal = torch.stack([torch.softmax(cal[p.name]["det"] / p.temperature, -1) for p in committee]).mean(0)
    comm_ev_each = torch.stack([torch.softmax(ev[p.name]["det"] / p.temperature, -1) for p in committee])
    comm_ev = comm_ev_each.mean(0)
    T_comm = fit_temperature(comm_cal.clamp_min(1e-8).log(), y_cal)
    probs["committee_mean"] = comm_ev
    probs["committee_mean_temperature"] = torch.softmax(comm_ev.clamp_min(1e-8).log() / T_comm, -1)

    calibration = {}
    for k, p in probs.items():
        pn = p.numpy()
        calibration[k] = {"ece": with_ci(lambda i, pn=pn: expected_calibration_error(pn[i], y[i]), n),
                          # what a perfectly calibrated model with these probabilities would read on n cases
                          "ece_noise_floor": {k2: (round(v, 4) if isinstance(v, float) else v)
                                              for k2, v in ece_noise_floor(pn, goal=0.03).items()},
                          "balanced_accuracy_of_its_labels": round(float(np.mean(
                              [(pn.argmax(1)[y == c] == c).mean() for c in np.unique(y)])), 4)}

    # signals for the chosen variant's (package-temperature) prediction
    p_det = probs["package_temperature"]
    pred = p_det.argmax(1)
    correct = (pred.numpy() == y)
    logC = math.log(len(labels))
    mc_p = torch.softmax(ev[name]["mc"] / T_pkg, -1)
    mean_mc = mc_p.mean(0)
    fmc = fusion_mc_logits(chosen.model, ev[name]["split"], T_MC, seed=3)
    fmc_p = torch.softmax(fmc / T_pkg, -1).mean(0)
    kl_to_mean = (comm_ev_each * (comm_ev_each.clamp_min(1e-8).log() - comm_ev.clamp_min(1e-8).log())).sum(-1).mean(0)
    signals = {
        "entropy_head_mc": entropy(mean_mc) / logC,
        "mi_head_mc": (entropy(mean_mc) - entropy(mc_p).mean(0)) / logC,
        "one_minus_maxprob": 1 - p_det.max(1).values,
        "entropy_fusion_mc": entropy(fmc_p) / logC,
        "committee_entropy": entropy(comm_ev) / logC,
        "committee_disagreement": kl_to_mean,
        "committee_vote": (comm_ev_each[:-1].argmax(-1) != pred).float().mean(0),   # the others (chosen is last)
    }
    detection = {}
    for k, s in signals.items():
        sn = s.numpy().astype(float)
        detection[k] = with_ci(lambda i, sn=sn: _error_auroc(correct[i], sn[i]), n)
    # the committee's own prediction, judged by its own entropy
    comm_correct = comm_ev.argmax(1).numpy() == y
    ce = (entropy(comm_ev) / logC).numpy()
    result = {
        "data": data, "variant": name, "committee": [p.name for p in committee], "mc_samples": T_MC,
        "chosen_variant_accuracy": round(float(correct.mean()), 4),
        "temperatures": {"package": T_pkg, "refitted": T_new, "committee": T_comm},
        "calibration": calibration,
        "error_detection_auroc": detection, "error_detection_chance": 0.5,
        "committee_prediction": {"accuracy": round(float(comm_correct.mean()), 4),
                                 "error_detection_auroc_by_committee_entropy":
                                     with_ci(lambda i: _error_auroc(comm_correct[i], ce[i]), n)},
    }
    if args.write_committee:
        others = committee[:-1]
        pred_cal = cal[name]["det"].argmax(1)
        vote_cal = torch.stack([cal[p.name]["det"].argmax(1) != pred_cal for p in others]).float().mean(0).numpy()
        fit = fit_vote_threshold(vote_cal, len(others))
        vote_ev = signals["committee_vote"].numpy()
        referred = np.rint(vote_ev * len(others)) >= fit["min_disagreeing"]
        wrong = ~correct
        doc = {
            "format": 1, "suite": Path(args.suite).name, "variant": Path(chosen.path).name, "package": name,
            "committee": [Path(p.path).name for p in others],
            # the weights the threshold was fitted with: a member retrained later no longer votes under it
            "package_sha256": {Path(p.path).name: p.sha256 for p in committee},
            "committee_rule": "every fused variant of the suite (more than one modality, no dual-expert encoder) "
                              "other than the chosen one; they share its frozen encoders",
            "signal": "committee_vote",
            "threshold": fit,
            "data": data,
            "fitted_on": "calibration",
            "evaluation": {
                "n": n, "chosen_variant_accuracy": result["chosen_variant_accuracy"],
                "error_detection_auroc": detection, "error_detection_chance": 0.5,
                "at_threshold": {"referred_fraction": round(float(referred.mean()), 4),
                                 "errors_caught": round(float(referred[wrong].mean()), 4) if wrong.any() else None,
                                 "accuracy_of_kept": round(float(correct[~referred].mean()), 4)
                                 if (~referred).any() else None,
                                 "accuracy_of_referred": round(float(correct[referred].mean()), 4)
                                 if referred.any() else None}},
            "script": "scripts/uncertainty_signals.py --write-committee",
        }
        result["committee_json"] = doc
        (Path(args.suite) / "committee.json").write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {Path(args.suite) / 'committee.json'}", file=sys.stderr)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
