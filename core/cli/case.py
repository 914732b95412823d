"""The verbs on one case: ``predict``, ``explain``, ``compare`` and ``report``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import UsageError, case_from_args, explain_parts, load_many, usage_errors


def cmd_predict(args: argparse.Namespace) -> int:
    from ..package import load_package

    if args.mc_samples < 0 or args.mc_samples > 1000:
        raise UsageError("--mc-samples must be between 0 and 1000.")
    pkg = load_package(args.model, int8=args.int8 or None)
    case = case_from_args(args)
    if args.set or args.set_note is not None or args.blur or args.drop_modality:  # issue 18: what-if
        from ..whatif import Edit, WhatIfSession, format_result, parse_sets

        with usage_errors():
            edit = Edit(parse_sets(args.set), args.set_note, args.blur, tuple(args.drop_modality))
            result = WhatIfSession(pkg, case, args.mc_samples).run(edit)
        print(json.dumps(result.to_dict()) if args.json else format_result(result) + "\nResearch use only, not a medical device.")
        return 0
    pred = pkg.predict_tta(case, args.mc_samples) if args.tta else pkg.predict(case, mc_samples=args.mc_samples)
    # the referral flag of the Prediction page and the case report: the committee vote where the suite's
    # committee.json was fitted for this package (its members loaded from the suite folder), else its own flag
    from ..committee import OWN_SIGNAL, decide_referral, referral_line

    decision = decide_referral(pkg, case, pred)
    if args.json:
        out = pred.to_dict()
        out["refer"] = decision.referral.refer          # the flag that applies; "referral" stays the package's own measure
        out["referral_decision"] = decision.to_dict()
        print(json.dumps(out))
    else:
        if decision.referral.signal == OWN_SIGNAL and not decision.referral.fallback:   # as before: the package's own flag
            flag = "REFER: " + pred.referral["advice"] if pred.refer else ""
        else:
            flag = referral_line(decision)
        print(f"{pred.label}  p={pred.calibrated.max():.3f}  normalised entropy={pred.uncertainty['normalised_entropy']:.3f}"
              f"  {flag}")
        print("Research use only, not a medical device.")
    return 0


def heatmap_arguments(methods: list[str], parts: tuple[str, ...], parts_given: bool,
                      tta: bool) -> tuple[list[str], tuple[str, ...]]:
    """``--cam``: every heatmap method of ``core.explain.gradcam`` (the CAMs of ``CAM_METHODS`` and the maps of
    ``MAP_METHODS``, e.g. ``feature_occlusion``), checked before a model is loaded (one-sentence ``UsageError``).
    Returns the methods (CAMs first: the stability part reads the first, and a map has no MC-dropout stability) and
    the parts: a map-only ``--cam`` leaves the default ``stability`` part out; asked for by ``--parts`` it is an
    error, as is ``--tta`` with a map (drawn without test-time augmentation)."""
    from ..explain.gradcam import CAM_METHODS, MAP_METHODS

    known = [*CAM_METHODS, *MAP_METHODS]
    bad = [m for m in methods if m not in known]
    if bad:
        raise UsageError(f"unknown heatmap method '{bad[0]}' for --cam; choose from: {', '.join(known)}.")
    maps = [m for m in methods if m in MAP_METHODS]
    if maps and tta:
        raise UsageError(f"--tta applies to the CAMs only; '{maps[0]}' is drawn without test-time augmentation.")
    cams = [m for m in methods if m not in MAP_METHODS]
    if maps and not cams and "stability" in parts:
        if parts_given:
            raise UsageError(f"the stability part needs a CAM in --cam; '{maps[0]}' has no MC-dropout stability.")
        parts = tuple(p for p in parts if p != "stability")
    return cams + maps, parts


def cmd_explain(args: argparse.Namespace) -> int:
    from ..explain import explain_case
    from ..explain.gradcam import heatmap_methods
    from ..package import load_package

    parts = explain_parts(args, "explain")
    methods, parts = heatmap_arguments(args.cam, parts, bool(args.parts), args.tta)
    pkg = load_package(args.model)
    if "image" in pkg.modalities:
        offered = heatmap_methods(pkg)
        cannot = [m for m in methods if m not in offered]
        if cannot:
            raise UsageError(f"this package's image encoder cannot draw '{cannot[0]}' (a dual expert has no one middle "
                             f"stage); choose from: {', '.join(offered)}.")
    if args.tta and not methods and "image" in pkg.modalities:
        from ..explain.gradcam import MAP_METHODS, NAMES, default_cam

        default = default_cam(pkg)[0]
        if default in MAP_METHODS:   # explain_case then resolves "auto" to Grad-CAM (gradcam.resolve_cam): say so
            print(f"--tta: drawing last-stage Grad-CAM with test-time augmentation instead of this package's default "
                  f"map ({NAMES.get(default, default)}), which is drawn without it.", file=sys.stderr)
    case = case_from_args(args)
    with usage_errors():
        target = int(args.target) if args.target and args.target.isdigit() else args.target
        ex = explain_case(pkg, case, target=target, parts=parts, cam_methods=methods or ("auto",), tta=args.tta,
                          ig_steps=args.ig_steps)
    if args.json:
        print(json.dumps(ex.to_dict()))
    else:
        print(f"{ex.target_label}: p={ex.prediction.calibrated[ex.target]:.3f}")
        if ex.modality:
            print("modality Shapley: " + ", ".join(f"{m} {v:+.3f}" for m, v in ex.modality["values"].items()))
        if ex.lesion_context:
            s = next(iter(ex.lesion_context["shares"].values()))
            print(f"CAM mass: lesion {s['lesion']:.2f}, context {s['context']:.2f}, background {s['background']:.2f}")
        print("Research use only, not a medical device.")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..compare import compare_variants

    pkgs = load_many([args.model, *args.compare])
    parts = explain_parts(args, "compare")
    with usage_errors():
        c = compare_variants(pkgs, case_from_args(args), explain=not args.no_explain, parts=parts)
    d = c.to_dict()
    if args.json:
        print(json.dumps(d))
    else:
        from ..plots.prediction import package_labels   # package names: several packages can share a variant type

        for name, col in zip(package_labels(d["columns"]), d["columns"]):
            print(f"{name:24s} {col['label']:8s} p={col['probability']:.3f}  uncertainty={col['normalised_entropy']:.3f}"
                  f"{'  REFER' if col['refer'] else ''}")
        a, e = d["agreement"], d["ensemble"]
        print(f"{'all agree' if a['all_agree'] else 'disagree'}: {a['votes']}; ensemble {e['label']} p={e['probability_of_label']:.3f}"
              f" (spread sd {e['std_of_label_probability']:.3f}, disagreement {e['disagreement']:.3f} nats)")
        for k, v in d["explanation_agreement"].get("mean", {}).items():
            print(f"  {k}: {v:.3f}")
        print("Research use only, not a medical device.")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..case import Case, CaseError
    from ..compare import compare_variants
    from ..explain import explain_case
    from ..report import FORMATS, ReportError, make_report

    out = Path(args.out)
    batch = args.cases_root is not None
    fmt = (args.format or (None if batch else out.suffix.lstrip(".").lower()) or "pdf")
    if fmt not in FORMATS:
        raise UsageError(f"unknown report format '{fmt}' (from --out or --format); use one of: {', '.join(FORMATS)}.")
    if batch:
        root = Path(args.cases_root)
        if not root.is_dir():
            raise UsageError(f"--cases-root '{root}' is not a folder.")
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
        if not folders:
            raise UsageError(f"--cases-root '{root}' holds no case folders.")
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out '{out}' must be a folder when --cases-root is given.")
        out.mkdir(parents=True, exist_ok=True)
    elif not out.parent.is_dir():
        raise UsageError(f"the folder of --out '{out}' does not exist.")
    parts = explain_parts(args, "report")
    pkgs = load_many([args.model, *args.compare])
    pkg = pkgs[0]
    # the referral flag as on the Prediction page (core.committee.decide_referral); the committee members are
    # loaded from the suite folder once for every case of a batch
    from functools import lru_cache

    from ..committee import decide_referral, suite_loader

    members = lru_cache(maxsize=None)(suite_loader(pkg))

    def one(case, path: Path) -> Path:
        with usage_errors(ReportError):
            ex = None if args.no_explain else explain_case(pkg, case, parts=parts)
            pred = ex.prediction if ex else pkg.predict(case)
            cmp = compare_variants(pkgs, case, explain=False) if len(pkgs) > 1 else None
            rep = make_report(pkg, case, ex, cmp, case_reference=args.reference, prediction=pred,
                              referral=decide_referral(pkg, case, pred, members))
        return rep.write(path, fmt)

    if not batch:
        print(one(case_from_args(args), out))
        return 0
    failed = 0
    for folder in folders:
        try:
            print(one(Case.from_folder(folder), out / f"{folder.name}.{fmt}"))
        except (CaseError, UsageError) as e:
            failed += 1
            print(f"error: case '{folder.name}': {' '.join(str(e).split())}", file=sys.stderr)
    print(f"{len(folders) - failed} of {len(folders)} reports written to {out}.", file=sys.stderr)
    return 2 if failed else 0
