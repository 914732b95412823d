"""The parser of ``python -m core`` and ``main``: bad input is one ``error:`` line on stderr and exit code 2
(``--debug``: the traceback instead)."""
from __future__ import annotations

import sys
import traceback
from typing import Sequence

from ..errors import FusionLensError
from .case import cmd_compare, cmd_explain, cmd_predict, cmd_report
from .common import Parser, add_case_arguments
from .models import cmd_bench, cmd_evaluate, cmd_faithfulness, cmd_train, cmd_train_suite, cmd_variants


def build_parser() -> Parser:
    from ..data.cohorts import COHORTS, generated_cohorts, names_sentence, suite_cohorts

    sized = names_sentence([n for n in COHORTS.names() if COHORTS.get(n).sized])
    real = names_sentence([n for n in COHORTS.names() if not COHORTS.get(n).generated])
    parser = Parser(prog="python -m core", description="FusionLens (research use only, not a medical device).")
    parser.add_argument("--debug", action="store_true", help="on an error, print its traceback instead of one line")
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=Parser)
    p = sub.add_parser("predict", help="predict one case with a model package")
    add_case_arguments(p)
    p.add_argument("--mc-samples", type=int, default=30, help="MC-dropout samples of the head (default 30)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: the suite's validation-fitted views "
                   "(suite_inference.json) where it has them, else 4 views of the image")
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
    p.add_argument("--cam", nargs="*", default=[],
                   help="heatmap methods: CAMs (core.explain.gradcam.CAM_METHODS) or middle-stage maps (MAP_METHODS: "
                        "median_ig, feature_occlusion (slow)) (default: the package's, core.explain.gradcam.default_cam)")
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
    p.add_argument("--cohort", choices=generated_cohorts(), help="default: all of them")
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
    p.add_argument("--cohort", required=True, choices=suite_cohorts(),
                   help="; ".join(f"{n}: {COHORTS.get(n).description}" for n in suite_cohorts()))
    p.add_argument("--data", help=f"{real}: the folder with its data (or set "
                                  f"{', '.join(COHORTS.get(n).data_env for n in COHORTS.names() if COHORTS.get(n).data_env)})")
    p.add_argument("--out", default="assets/models")
    p.add_argument("--variants", nargs="*", help="a subset of the registry (default: all)")
    p.add_argument("--n", type=int, help=f"{sized} cohort size (default 10000)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int, help="generator / split seed (default: the cohort's default seed)")
    p.set_defaults(func=cmd_train_suite)
    p = sub.add_parser("evaluate", help="evaluate a package on a cohort split or a dataset")
    p.add_argument("--model", required=True)
    p.add_argument("--cohort", choices=generated_cohorts())
    p.add_argument("--data", help="a dataset folder / CSV in one of the supported layouts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=2000, help=f"{sized} cases to generate (default 2000)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--mc-samples", type=int, default=None)
    p.add_argument("--int8", action="store_true", help="evaluate the int8 (dynamically quantized) model")
    p.add_argument("--drop", nargs="*", default=[], metavar="MODALITY", help="remove these inputs from every case")
    p.add_argument("--mechanisms", action="store_true",
                   help="also measure each fusion mechanism (movement, spread, agreement with Shapley / the evidence)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation with the suite's validation-fitted "
                                                      "settings (suite_inference.json beside the package)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("faithfulness", help="explanations measured against the generator's ground truth: "
                                            "known-answer controls (--controls) or packages on a fresh seed")
    p.add_argument("packages", nargs="*", help="model package folders to measure on a fresh generator seed")
    p.add_argument("--controls", action="store_true", help="train / load the single-source control models and "
                                                           "print the known-answer table (trained vs randomised)")
    p.add_argument("--sources", nargs="+", default=["lesion", "context", "note", "metadata"],
                   choices=["lesion", "context", "note", "metadata"])
    p.add_argument("--n", type=int, default=None, help="control training cohort size (default: 2100 note-only, else 700)")
    p.add_argument("--eval-n", type=int, default=70, help="control evaluation cohort size (fresh seed)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--retrain", action="store_true", help="retrain the controls even if cached")
    p.add_argument("--alternatives", nargs="?", const="all", default=None, metavar="LABELS",
                   help="controls: also measure the offered alternative explainers; alone: all of them (pixel IG, feature "
                        "occlusion, note IG from [UNK], word occlusion; several times slower), or a comma-separated list "
                        "of their labels, e.g. --alternatives 'feature occlusion'")
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
    from ..cohort.cli import add_explain_cohort  # issue 18: batch explanations of a cohort to Parquet

    add_explain_cohort(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..case import CaseError
    from ..package import PackageError

    args = None
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (FusionLensError, CaseError, PackageError) as e:
        return _fail(args, 2, f"error: {' '.join(str(e).split())}")
    except KeyboardInterrupt:
        return _fail(args, 130, "error: interrupted.")
    except Exception as e:  # noqa: BLE001 (a bug, not bad input: still one line; the traceback with --debug)
        return _fail(args, 1, f"error: unexpected failure ({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
                              "please report it.")


def _fail(args, code: int, line: str) -> int:
    if getattr(args, "debug", False):
        traceback.print_exc()
    else:
        print(line, file=sys.stderr)
    return code
