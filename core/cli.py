"""``python -m core <verb>``. Bad input: exit code 2 and one line on stderr starting ``error:``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class UsageError(Exception):
    """Bad flags or input: reported as one ``error:`` line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print usage + exit 2; we want one line
        raise UsageError(message)


def _parse_meta(pairs: Sequence[str], meta_file: str | None) -> dict[str, Any] | None:
    meta: dict[str, Any] = {}
    if meta_file:
        try:
            data = json.loads(Path(meta_file).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"metadata file '{meta_file}' does not exist.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"metadata file '{meta_file}' is not valid JSON ({e}).") from None
        except RecursionError:
            raise UsageError(f"metadata file '{meta_file}' is nested too deeply to be metadata.") from None
        if not isinstance(data, dict):
            raise UsageError(f"metadata file '{meta_file}' must hold a JSON object of name: value pairs.")
        meta.update(data)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--meta expects key=value, got '{pair}'.")
        meta[key.strip()] = value.strip()
    return meta or None


def _read_note(args: argparse.Namespace) -> Any:
    if args.note is not None and args.note_file:
        raise UsageError("give either --note or --note-file, not both.")
    if args.note_file:
        p = Path(args.note_file)
        if not p.is_file():
            raise UsageError(f"note file '{p}' does not exist.")
        return p.read_bytes()
    return args.note


def _case_from_args(args: argparse.Namespace):
    from .case import Case

    if getattr(args, "case_dir", None):
        given = [f for f in ("image", "mask", "note", "note_file", "meta_file", "spectrum") if getattr(args, f, None)]
        if given or args.meta:
            raise UsageError(f"give either --case-dir or single inputs (--{(given or ['meta'])[0].replace('_', '-')}), not both.")
        return Case.from_folder(args.case_dir)
    return Case.from_inputs(image=args.image, mask=args.mask, note=_read_note(args),
                            metadata=_parse_meta(args.meta, args.meta_file), spectrum=args.spectrum,
                            case_id=args.case_id)


def add_case_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model package folder (config.json + model.safetensors)")
    p.add_argument("--image", help="dermoscopy image (PNG/JPEG/TIFF)")
    p.add_argument("--mask", help="lesion mask, same size as the image (white = lesion)")
    p.add_argument("--note", help="clinical note text")
    p.add_argument("--note-file", help="clinical note as a UTF-8 text file")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="one metadata value (repeatable)")
    p.add_argument("--meta-file", help="metadata as a JSON object")
    p.add_argument("--spectrum", help="spectrum CSV (wavelength,value rows, or one value per row)")
    p.add_argument("--case-id", help="a case reference (no patient names)")
    p.add_argument("--case-dir", help="a case folder (image.png, mask.png, note.txt, metadata.json, spectrum.csv) "
                                      "instead of the single inputs")


def cmd_predict(args: argparse.Namespace) -> int:
    from .package import load_package

    if args.mc_samples < 0 or args.mc_samples > 1000:
        raise UsageError("--mc-samples must be between 0 and 1000.")
    pkg = load_package(args.model, int8=args.int8 or None)
    case = _case_from_args(args)
    if args.set or args.set_note is not None or args.blur or args.drop_modality:  # issue 18: what-if
        from .whatif import Edit, WhatIfSession, format_result, parse_sets

        try:
            edit = Edit(parse_sets(args.set), args.set_note, args.blur, tuple(args.drop_modality))
            result = WhatIfSession(pkg, case, args.mc_samples).run(edit)
        except ValueError as e:
            raise UsageError(str(e)) from None
        print(json.dumps(result.to_dict()) if args.json else format_result(result) + "\nResearch use only, not a medical device.")
        return 0
    pred = pkg.predict_tta(case, args.mc_samples) if args.tta else pkg.predict(case, mc_samples=args.mc_samples)
    if args.json:
        print(json.dumps(pred.to_dict()))
    else:
        print(f"{pred.label}  p={pred.calibrated.max():.3f}  normalised entropy={pred.uncertainty['normalised_entropy']:.3f}"
              f"  {'REFER: ' + pred.referral['advice'] if pred.refer else ''}")
        print("Research use only, not a medical device.")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import CAM_METHODS, DEFAULT_PARTS, explain_case
    from .package import load_package

    parts = _explain_parts(args, DEFAULT_PARTS)
    bad = [m for m in args.cam if m not in CAM_METHODS]
    if bad:
        raise UsageError(f"unknown CAM method '{bad[0]}'; choose from: {', '.join(CAM_METHODS)}.")
    pkg = load_package(args.model)
    case = _case_from_args(args)
    try:
        target = int(args.target) if args.target and args.target.isdigit() else args.target
        ex = explain_case(pkg, case, target=target, parts=parts, cam_methods=args.cam or ("gradcam",), tta=args.tta,
                          ig_steps=args.ig_steps)
    except ValueError as e:
        raise UsageError(str(e)) from None
    d = ex.to_dict()
    if args.json:
        print(json.dumps(d))
    else:
        print(f"{ex.target_label}: p={ex.prediction.calibrated[ex.target]:.3f}")
        if ex.modality:
            print("modality Shapley: " + ", ".join(f"{m} {v:+.3f}" for m, v in ex.modality["values"].items()))
        if ex.lesion_context:
            s = next(iter(ex.lesion_context["shares"].values()))
            print(f"CAM mass: lesion {s['lesion']:.2f}, context {s['context']:.2f}, background {s['background']:.2f}")
        print("Research use only, not a medical device.")
    return 0


def _explain_parts(args: argparse.Namespace, default: Sequence[str]) -> tuple[str, ...]:
    from .explain import PARTS

    parts = tuple(args.parts) if args.parts else tuple(default)
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise UsageError(f"unknown part '{bad[0]}'; choose from: {', '.join(PARTS)}.")
    return parts


def _load_many(paths: Sequence[str]):
    from .package import load_package

    if not 1 <= len(paths) <= 32:
        raise UsageError("--compare takes 1 to 32 model folders.")
    return [load_package(p) for p in paths]


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_variants

    pkgs = _load_many([args.model, *args.compare])
    parts = _explain_parts(args, ("cam", "lesion_context", "note", "table", "spectrum", "modality"))
    try:
        c = compare_variants(pkgs, _case_from_args(args), explain=not args.no_explain, parts=parts)
    except ValueError as e:
        raise UsageError(str(e)) from None
    d = c.to_dict()
    if args.json:
        print(json.dumps(d))
    else:
        for col in d["columns"]:
            print(f"{col['variant']:18s} {col['label']:8s} p={col['probability']:.3f}  uncertainty={col['normalised_entropy']:.3f}"
                  f"{'  REFER' if col['refer'] else ''}")
        a, e = d["agreement"], d["ensemble"]
        print(f"{'all agree' if a['all_agree'] else 'disagree'}: {a['votes']}; ensemble {e['label']} p={e['probability_of_label']:.3f}"
              f" (spread sd {e['std_of_label_probability']:.3f}, disagreement {e['disagreement']:.3f} nats)")
        for k, v in d["explanation_agreement"].get("mean", {}).items():
            print(f"  {k}: {v:.3f}")
        print("Research use only, not a medical device.")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .case import Case, CaseError
    from .compare import compare_variants
    from .explain import explain_case
    from .report import FORMATS, ReportError, make_report

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
    parts = _explain_parts(args, ("cam", "lesion_context", "stability", "note", "table", "spectrum", "modality", "faithfulness"))
    pkgs = _load_many([args.model, *args.compare])
    pkg = pkgs[0]

    def one(case, path: Path) -> Path:
        try:
            ex = None if args.no_explain else explain_case(pkg, case, parts=parts)
            cmp = compare_variants(pkgs, case, explain=False) if len(pkgs) > 1 else None
            rep = make_report(pkg, case, ex, cmp, case_reference=args.reference, prediction=ex.prediction if ex else None)
        except ReportError as e:
            raise UsageError(str(e)) from None
        return rep.write(path, fmt)

    if not batch:
        print(one(_case_from_args(args), out))
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


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench, table

    if not 1 <= args.cases <= 1000:
        raise UsageError("--cases must be between 1 and 1000.")
    if not 1 <= args.repeats <= 100:
        raise UsageError("--repeats must be between 1 and 100.")
    if not 2 <= args.memory_cases <= 10000:
        raise UsageError("--memory-cases must be between 2 and 10000.")
    if args.json and not Path(args.json).parent.is_dir():
        raise UsageError(f"the folder of --json '{args.json}' does not exist.")
    cohorts = [args.cohort] if args.cohort else ["dermatology", "diabetes"]
    try:
        result = run_bench(cohorts, args.cases, args.repeats, args.memory_cases, log=lambda s: print(s, file=sys.stderr))
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_variants(args: argparse.Namespace) -> int:
    from .fusion import COMMON_DIAGNOSTICS, FUSIONS

    from .heads import HEADS

    rows = [{"name": n, "summary": FUSIONS.get(n).SUMMARY,
             "diagnostics": {**COMMON_DIAGNOSTICS, **FUSIONS.get(n).DIAGNOSTICS}} for n in FUSIONS.names()]
    heads = [{"name": n, "summary": HEADS.get(n).SUMMARY, "diagnostics": HEADS.get(n).DIAGNOSTICS} for n in HEADS.names()]
    if args.json:
        print(json.dumps(rows if not args.heads else heads, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:16s} {r['summary']}")
        print("\nheads (head: {type: NAME} in a training config):")
        for r in heads:
            print(f"{r['name']:16s} {r['summary']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training.config import ConfigError, load_config
    from .training.train import train

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if args.devices is not None:
        cfg.trainer.devices = int(args.devices) if args.devices.isdigit() else args.devices
    if args.num_nodes is not None:
        cfg.trainer.num_nodes = args.num_nodes
    if args.out:
        cfg.out = args.out
    try:
        out = train(cfg)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if out is not None:
        print(f"package written to {out}")
    return 0


def cmd_faithfulness(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(max(1, args.threads))
    if args.controls:
        from .explain import controls as K

        rows = K.run_controls(args.sources, n=args.n, n_eval=args.eval_n, epochs=args.epochs, retrain=args.retrain,
                              log=lambda m: print(m, file=sys.stderr, flush=True))
        print(json.dumps(rows, indent=2, default=float) if args.json else K.controls_table(rows))
        return 0
    if not args.packages:
        raise UsageError("give model package folders to measure, or --controls.")
    if args.seed == 0:
        raise UsageError("seed 0 is the training cohort's seed; measure on a fresh seed (e.g. 9201).")
    from .data.cohorts.dermatology import generate_dermatology
    from .explain.cohort import KINDS, cohort_faithfulness

    cohort = generate_dermatology(n=args.cohort_n, seed=args.seed, workers=1)
    items = [it for k in KINDS for it in [i for i in cohort.items if i.evidence == k][: args.per_kind]]
    out = {}
    for path in args.packages:
        from .package import load_package

        out[path] = cohort_faithfulness(load_package(path), items)
    if args.json:
        print(json.dumps(out, indent=2, default=float))
    else:
        for path, f in out.items():
            a = f["predicted"]["all"]
            print(f"{path}: accuracy {f['accuracy']:.2f} on {f['n']} cases of seed {args.seed}; lesion mass ratio "
                  f"{a['lesion_ratio_lesion_decided']:.2f} (chance 1.00); pointing game, decisive region "
                  f"{a['pointing_game_decisive']:.2f} (chance {a['pointing_game_decisive_chance']:.2f}); Shapley decisive "
                  f"modality, balanced {a['shapley_decisive_balanced']:.2f} (chance {a['shapley_decisive_balanced_chance']:.2f})")
    return 0


def cmd_train_suite(args: argparse.Namespace) -> int:
    from .training.suite import train_suite

    if args.n is not None and args.n < 50:
        raise UsageError("--n must be at least 50 cases.")
    if args.cohort == "ham10000":
        from .data import DataError
        from .data.cohorts.ham10000 import ENV
        from .data.loaders import _ham_csv

        if args.data:
            os.environ[ENV] = args.data
        if not os.environ.get(ENV):
            raise UsageError(f"--cohort ham10000 needs its data: pass --data PATH or set {ENV}.")
        try:
            _ham_csv(Path(os.environ[ENV]))
        except DataError as e:
            raise UsageError(str(e)) from None
    elif args.data:
        raise UsageError("--data is only for --cohort ham10000; the other demo cohorts are generated.")
    train_suite(args.cohort, args.out, args.variants, args.n, args.epochs, args.seed)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import DataError
    from .package import load_package
    from .training.config import DataConfig
    from .training.evaluate import evaluate_package, select_items
    from .training.train import load_cohort

    if (args.cohort is None) == (args.data is None):
        raise UsageError("give exactly one of --cohort and --data.")
    pkg = load_package(args.model, int8=args.int8 or None)
    try:
        if args.cohort:
            cohort = load_cohort(DataConfig(cohort=args.cohort, n=args.n, seed=args.seed))
        else:
            cohort = load_cohort(DataConfig(path=args.data))
        items = select_items(cohort, args.split)
        metrics = evaluate_package(pkg, items, mc_samples=args.mc_samples, drop=args.drop)
        if getattr(args, "mechanisms", False):   # issue 14: can each fusion mechanism be read on these cases?
            from .explain.mechanisms import measure_cases

            metrics["mechanisms"] = measure_cases(pkg, items)
    except (DataError, ValueError) as e:
        raise UsageError(str(e)) from None
    metrics = {"model": pkg.info(), "data": {"cohort": cohort.name, "seed": args.seed, "split": args.split,
                                             "dropped": list(args.drop)}, **metrics}
    if args.json:
        print(json.dumps(metrics))
    else:
        for k in ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece", "error_detection_auroc"):
            v = metrics[k]
            print(f"{k:24s} {v['value']:.3f}  (95% CI {v['ci95'][0]:.3f}-{v['ci95'][1]:.3f})")
        if "mechanisms" in metrics:
            from .explain.mechanisms import text_report

            print(text_report(metrics["mechanisms"]))
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="python -m core", description="FusionLens (research use only, not a medical device).")
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=Parser)
    p = sub.add_parser("predict", help="predict one case with a model package")
    add_case_arguments(p)
    p.add_argument("--mc-samples", type=int, default=30, help="MC-dropout samples of the head (default 30)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average over 4 views of the image")
    p.add_argument("--int8", action="store_true", help="int8 linear layers (faster CPU inference; see the README)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="what-if: change one metadata value (repeatable; NAME= clears it) and compare with the original")
    p.add_argument("--set-note", help="what-if: replace the note (\"\" removes it)")
    p.add_argument("--blur", choices=["lesion", "context"], help="what-if: blur the lesion or the context ring around it")
    p.add_argument("--drop-modality", action="append", default=[], metavar="MODALITY", help="what-if: remove an input")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("explain", help="explain one case: Grad-CAM, attributions, modality Shapley")
    add_case_arguments(p)
    p.add_argument("--target", help="class to explain (label or index; default: the predicted class)")
    p.add_argument("--parts", nargs="*", help="explanation parts (default: all the fast ones)")
    p.add_argument("--cam", nargs="*", default=[], help="CAM methods (default: gradcam)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation for the CAM")
    p.add_argument("--ig-steps", type=int, default=24)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("compare", help="one case through several model packages, side by side")
    add_case_arguments(p)
    p.add_argument("--compare", nargs="+", default=[], metavar="DIR", help="the other model folders")
    p.add_argument("--parts", nargs="*", help="explanation parts per variant")
    p.add_argument("--no-explain", action="store_true", help="predictions only (fastest; no explanation agreement)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("report", help="write the case report (PDF, HTML or JSON)")
    add_case_arguments(p)
    p.add_argument("--out", required=True, help="report file (.pdf, .html, .json); a folder with --cases-root")
    p.add_argument("--format", choices=["pdf", "html", "json", "csv"], help="default: from the --out suffix (pdf)")
    p.add_argument("--cases-root", help="batch: a folder of case folders, one report each")
    p.add_argument("--compare", nargs="*", default=[], metavar="DIR", help="also compare these model folders")
    p.add_argument("--reference", help="a free case reference printed on the report (no patient names)")
    p.add_argument("--parts", nargs="*", help="explanation parts (default: every fast part + faithfulness)")
    p.add_argument("--no-explain", action="store_true", help="prediction only")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("bench", help="time every stage against the naive way (ratios, memory)")
    p.add_argument("--cohort", choices=["dermatology", "diabetes"], help="default: both")
    p.add_argument("--cases", type=int, default=12, help="demo cases per cohort (default 12)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of the fast stages per case (default 3)")
    p.add_argument("--memory-cases", type=int, default=200, help="cases explained in a row for the memory check")
    p.add_argument("--json", help="also write the full result as JSON here")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("train", help="train one model package from a YAML config")
    p.add_argument("--config", required=True)
    p.add_argument("--devices", help="devices per node (e.g. 2 for a 2-process DDP run)")
    p.add_argument("--num-nodes", type=int)
    p.add_argument("--out", help="override the config's output folder")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("train-suite", help="train every variant + unimodal baselines for a demo cohort")
    p.add_argument("--cohort", required=True, choices=["dermatology", "diabetes", "ham10000"])
    p.add_argument("--data", help="ham10000: the folder with HAM10000_metadata.csv (or set FUSIONLENS_HAM10000)")
    p.add_argument("--out", default="assets/models")
    p.add_argument("--variants", nargs="*", help="a subset of the registry (default: all)")
    p.add_argument("--n", type=int, help="dermatology cohort size (default 10000)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_suite)
    p = sub.add_parser("evaluate", help="evaluate a package on a cohort split or a dataset")
    p.add_argument("--model", required=True)
    p.add_argument("--cohort", choices=["dermatology", "diabetes"])
    p.add_argument("--data", help="a dataset folder / CSV in one of the supported layouts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=2000, help="dermatology cases to generate (default 2000)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--mc-samples", type=int, default=None)
    p.add_argument("--int8", action="store_true", help="evaluate the int8 (dynamically quantized) model")
    p.add_argument("--drop", nargs="*", default=[], metavar="MODALITY", help="remove these inputs from every case")
    p.add_argument("--mechanisms", action="store_true",
                   help="also measure each fusion mechanism (movement, spread, agreement with Shapley / the evidence)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("faithfulness", help="explanations measured against the generator's ground truth: "
                                            "known-answer controls (--controls) or packages on a fresh seed")
    p.add_argument("packages", nargs="*", help="model package folders to measure on a fresh generator seed")
    p.add_argument("--controls", action="store_true", help="train / load the single-source control models and "
                                                           "print the known-answer table (trained vs randomised)")
    p.add_argument("--sources", nargs="+", default=["lesion", "context", "note", "metadata"],
                   choices=["lesion", "context", "note", "metadata"])
    p.add_argument("--n", type=int, default=700, help="control training cohort size")
    p.add_argument("--eval-n", type=int, default=70, help="control evaluation cohort size (fresh seed)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--retrain", action="store_true", help="retrain the controls even if cached")
    p.add_argument("--seed", type=int, default=9201, help="packages: fresh generator seed (never the training seed 0)")
    p.add_argument("--cohort-n", type=int, default=600)
    p.add_argument("--per-kind", type=int, default=10, help="packages: cases per evidence kind")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_faithfulness)
    p = sub.add_parser("variants", help="list the fusion variants (and heads) in the registry")
    p.add_argument("--json", action="store_true")
    p.add_argument("--heads", action="store_true", help="with --json: list the heads instead")
    p.set_defaults(func=cmd_variants)
    from .cohort.cli import add_explain_cohort  # issue 18: batch explanations of a cohort to Parquet

    add_explain_cohort(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .case import CaseError
    from .package import PackageError

    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (UsageError, CaseError, PackageError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: still one line, never a traceback
        print(f"error: unexpected failure ({type(e).__name__}: {' '.join(str(e).split())[:300]}); please report it.", file=sys.stderr)
        return 1
