#!/usr/bin/env python
"""A rendered case-report page for the README: docs/screenshots/report_page<N>.png.

Writes the PDF case report of one demo case (main model + a variant comparison) with core.report,
then renders its pages to PNG with pypdfium2 (requirements-dev.txt; no browser needed).

    python scripts/report_page.py [--cohort dermatology] [--case derm-00004] [--model mmtm]
                                  [--compare concat gated hierarchical] [--pages 1 2] [--out docs/screenshots]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", default="dermatology")
    ap.add_argument("--case", help="demo case folder name (default: the first)")
    ap.add_argument("--model", default="mmtm")
    ap.add_argument("--compare", nargs="*", default=["concat", "gated", "hierarchical"])
    ap.add_argument("--pages", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    args = ap.parse_args()

    import pypdfium2 as pdfium

    from core import Case, load_package
    from core.compare import compare_variants
    from core.explain import default_parts, explain_case
    from core.report import make_report

    models = ROOT / "assets" / "models" / args.cohort
    cases = ROOT / "assets" / "cases" / args.cohort
    folder = cases / args.case if args.case else sorted(p for p in cases.iterdir() if p.is_dir())[0]
    case = Case.from_folder(folder)
    pkg = load_package(models / args.model)
    others = [load_package(models / v) for v in args.compare]
    ex = explain_case(pkg, case, parts=default_parts("report"))
    cmp = compare_variants([pkg, *others], case, explain=False)
    rep = make_report(pkg, case, ex, cmp, case_reference="README example")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pdf_path = out / "report_example.pdf"
    rep.write(pdf_path)
    pdf = pdfium.PdfDocument(str(pdf_path))
    for n in args.pages:
        if 1 <= n <= len(pdf):
            pdf[n - 1].render(scale=1.4).to_pil().save(out / f"report_page{n}.png")
            print(out / f"report_page{n}.png")
    pdf_path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
