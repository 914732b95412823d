#!/usr/bin/env python
"""Screenshots of the dashboard for the README: docs/screenshots/<page>.png.

Starts `streamlit run dashboard/Home.py` against the shipped assets (``assets/models``,
``assets/cases``, or FUSIONLENS_MODELS / FUSIONLENS_CASES when set), walks the clinician journey in
headless Chromium (Debian's /usr/bin/chromium under Playwright; never `playwright install`) with a
demo case — the first dermatology demo case when there is one, else the first demo case of a cohort
that has a model package — and writes full-page PNGs (1400 px wide) of Home, Case, Prediction,
Fusion internals, Image explanations and Attributions.

When no demo case exists at all, one test-split case of the selected cohort is drawn with the
cohort's generator (core.data.cohorts) into a temporary folder and used instead; the script says so.

    python scripts/screenshots.py [--cohort dermatology] [--variant mmtm] [--case dermatology/derm-00042]
                                  [--out docs/screenshots]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import e2e_harness as h  # noqa: E402

PAGE_FILES = {"Home": "home", "Case": "case", "Prediction": "prediction", "Fusion internals": "fusion_internals",
              "Image explanations": "image_explanations", "Attributions": "attributions", "Compare": "compare"}
WAIT_MS = 300_000   # real encoders on a CPU: a page's explanations may take a while


def roots(env: str, default: Path) -> list[Path]:
    value = os.environ.get(env, "").strip()
    return [Path(p.strip()).expanduser().resolve() for p in value.split(",") if p.strip()] if value else [default]


def package_cohorts(models: list[Path]) -> dict[str, list[str]]:
    """cohort -> the variants of the packages found (config facts only)."""
    from core import PackageError, discover_packages, read_package_summary

    out: dict[str, list[str]] = {}
    for root in models:
        for path in discover_packages(root):
            try:
                s = read_package_summary(path)
            except PackageError as e:
                print(f"  skipped a package: {e}")
                continue
            out.setdefault(s.get("cohort") or "custom", []).append(s["variant"])
    return out


def generate_demo_case(cohort: str, dest: Path) -> Path:
    """One test-split case of ``cohort`` from its generator, written as a demo case folder."""
    import numpy as np

    if cohort == "diabetes":
        from core.data.cohorts.diabetes import build_diabetes
        data = build_diabetes(seed=0)
    elif cohort == "dermatology":
        from core.data.cohorts.dermatology import generate_dermatology
        data = generate_dermatology(n=60, seed=0, cache_dir=dest / "_generated", image_size=224)
    else:
        raise SystemExit(f"error: no demo cases were found and there is no generator for the cohort '{cohort}'.")
    item = sorted(data.split("test"), key=lambda it: it.case_id)[0]
    folder = dest / cohort / item.case_id
    folder.mkdir(parents=True)
    if item.image_path is not None:
        (folder / "image.png").write_bytes(Path(item.image_path).read_bytes())
    if item.mask_path is not None:
        (folder / "mask.png").write_bytes(Path(item.mask_path).read_bytes())
    if item.note:
        (folder / "note.txt").write_text(item.note + "\n", encoding="utf-8")
    (folder / "metadata.json").write_text(json.dumps({**item.metadata, "label": item.label}, indent=2) + "\n")
    if item.spectrum is not None:
        sp = np.asarray(item.spectrum, dtype=float)
        if sp.ndim == 1:
            sp = np.stack([np.asarray(data.spectrum_grid, dtype=float), sp], 1)
        (folder / "spectrum.csv").write_text("".join(f"{w:.6g},{v:.8g}\n" for w, v in sp))
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", help="cohort to show (default: the demo case's)")
    ap.add_argument("--variant", help="fusion variant to select in the sidebar (default: the app's default)")
    ap.add_argument("--case", help="demo case as cohort/case_id (default: the first dermatology one, else any)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    args = ap.parse_args()
    if not Path(h.CHROMIUM).exists():
        print(f"error: no browser at {h.CHROMIUM}; install Debian's chromium (apt-get install chromium).")
        return 2

    if shutil.which("fc-list") and "emoji" not in subprocess.run(["fc-list"], capture_output=True, text=True).stdout.lower():
        print("note: no emoji font is installed, so the icons of st.success / st.error / st.warning (✅ 🚫 🔁) show as "
              "empty boxes; `apt-get install fonts-noto-color-emoji` fixes the screenshots.")

    from core.case_io import list_demo_cases  # the app's own demo-case discovery, in its order

    models = roots("FUSIONLENS_MODELS", ROOT / "assets" / "models")
    case_roots = roots("FUSIONLENS_CASES", ROOT / "assets" / "cases")
    cohorts = package_cohorts(models)
    if not cohorts:
        print(f"error: no model packages in {', '.join(map(str, models))}; train a suite first.")
        return 2
    print(f"packages: {', '.join(f'{c} ({len(v)})' for c, v in sorted(cohorts.items()))}")

    tmp = tempfile.TemporaryDirectory(prefix="fusionlens-shots-")
    demos = [d for d in list_demo_cases(case_roots) if d.cohort in cohorts]
    if args.case:
        demos = [d for d in demos if d.key == args.case]
        if not demos:
            print(f"error: no demo case {args.case} (of a cohort with packages) in {', '.join(map(str, case_roots))}.")
            return 2
    if args.cohort:
        demos = [d for d in demos if d.cohort == args.cohort]
    if demos:
        demo = next((d for d in demos if d.cohort == "dermatology"), demos[0])
        demo_key, cohort = demo.key, demo.cohort
        print(f"demo case: {demo_key} ({demo.path})")
    else:
        cohort = args.cohort or ("dermatology" if "dermatology" in cohorts else sorted(cohorts)[0])
        folder = generate_demo_case(cohort, Path(tmp.name) / "cases")
        case_roots = case_roots + [Path(tmp.name) / "cases"]
        demo_key = f"{cohort}/{folder.name}"
        print(f"NOTE: no demo case found in {', '.join(map(str, case_roots[:-1]))}; generated {demo_key} "
              "from the cohort generator for these screenshots.")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {"FUSIONLENS_MODELS": ",".join(map(str, models)), "FUSIONLENS_CASES": ",".join(map(str, case_roots))}
    log = Path(tmp.name) / "streamlit.log"
    t_all = time.perf_counter()
    try:
        with h.server(env, log) as srv, h.chromium() as browser:
            context = browser.new_context(viewport=h.VIEWPORT)
            context.set_default_timeout(WAIT_MS)
            page = context.new_page()
            page.on("dialog", lambda d: d.dismiss())

            def shot(name: str) -> None:
                t = time.perf_counter()
                h.wait_settled(page, WAIT_MS)
                h.no_exception(page)
                path = out / f"{PAGE_FILES[name]}.png"
                h.full_page_screenshot(page, path)
                print(f"  {name:<20} {time.perf_counter() - t:6.1f} s  -> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")

            h.open_app(page, srv.url)
            h.choose(page, "w_cohort", cohort)
            h.wait_settled(page, WAIT_MS)
            if args.variant:
                h.choose(page, "w_variant", args.variant)
                h.wait_settled(page, WAIT_MS)
            print(f"model: {cohort} / {h.selected(page, 'w_variant')}")
            shot("Home")

            h.goto_page(page, "Case")
            h.keyed(page, "case_mode").get_by_text("Demo case").click()
            h.wait_settled(page, WAIT_MS)
            h.choose(page, "demo_pick", demo_key)
            h.keyed(page, "demo_load").locator("button").click()
            h.main(page).get_by_text(f"from demo case {demo_key}").wait_for(timeout=WAIT_MS)
            shot("Case")
            for name in ("Prediction", "Fusion internals", "Image explanations", "Attributions", "Compare"):
                h.goto_page(page, name, timeout=WAIT_MS)
                shot(name)
            context.close()
            if not srv.alive():
                print(f"error: the app stopped:\n{srv.log_tail()}")
                return 1
    except Exception as e:  # noqa: BLE001  (report the server's log with any failure)
        print(f"error: {type(e).__name__}: {e}\n--- streamlit log ---\n{log.read_text(errors='replace')[-4000:] if log.exists() else ''}")
        return 1
    finally:
        tmp.cleanup()
    print(f"done in {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
