"""The cohort engine's batched gradient parts against the per-case explainer (``core.explain``) and Captum.

* the table's integrated gradients of a whole batch (cases x steps in one pass, no Captum) equal Captum's
  ``IntegratedGradients`` on the same batch to 1e-6 and ``explain_case``'s per-case values to 1e-5;
* the note's integrated gradients (the shared encoder's forward once per note, one backward per package)
  equal ``explain_case``'s per-case word scores to 1e-5;
* an engine run with every part never imports Captum (nor matplotlib, which Captum pulls in).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny import make_case, save_suite

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return save_suite(tmp_path_factory.mktemp("cohort-grad") / "models", ("gated", "mmtm"))


@pytest.fixture(scope="module")
def batches(suite):
    from core.cohort.engine import CohortExplainer, _Batch

    ex = CohortExplainer(suite, ("prediction", "note_top", "table_top"))
    cases = [make_case(i) for i in range(5)]
    shared: dict = {}
    out = []
    for pkg in ex.packages:
        b = _Batch(pkg, cases, shared)
        with torch.no_grad():
            inputs, present = b.gather(torch.arange(len(cases)))
            b.targets = pkg.model.fuse_and_classify(pkg.model.encode(inputs, present), present).logits.argmax(-1)
        out.append(b)
    return ex, cases, out


def _explain(pkg, case, part):
    from core.explain import explain_case

    return explain_case(pkg, case, parts=[part], ig_steps=24, shapley_samples=0)


def test_batched_table_ig_equals_captum_and_the_per_case_explainer(batches):
    from captum.attr import IntegratedGradients

    from core.cohort.gradients import table_ig

    ex, cases, bs = batches
    for b in bs:
        j = b.model.modalities.index("metadata")
        rows = b.present[:, j].nonzero().squeeze(1)
        assert len(rows) == len(cases)
        schema = b.model.encoders["metadata"].schema
        x = b.inputs["metadata"]["values"]
        base = torch.tensor([schema.baseline_row()], dtype=x.dtype).expand_as(x).contiguous()

        def f(v, r, b=b):
            return b.logits(r, replace={"metadata": {"values": v}})

        ours = table_ig(f, x, base, rows, b.targets[rows], 24)
        with torch.enable_grad():
            ref = IntegratedGradients(f).attribute(x, baselines=base, n_steps=24, method="gausslegendre",
                                                   additional_forward_args=(rows,), target=b.targets[rows])
        assert ours.shape == x.shape and float(ours.abs().max()) > 1e-4     # not trivially zero
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
        for k, case in enumerate(cases):   # the per-case explainer: explain_case's table part, feature by feature
            e = _explain(b.pkg, case, "table")
            assert e.target == int(b.targets[k])
            per_case = np.array([r["integrated_gradients"] for r in e.table["features"]])
            batched = np.array([float(ours[k, s].sum()) for s in schema.slices])
            np.testing.assert_allclose(batched, per_case, atol=TOL, rtol=0)


def test_batched_table_ig_would_catch_a_wrong_step_weighting(batches):
    """The comparison above is tight enough to fail for a broken quadrature (uniform weights)."""
    from core.cohort import gradients

    ex, cases, bs = batches
    b = bs[1]
    schema = b.model.encoders["metadata"].schema
    x = b.inputs["metadata"]["values"]
    base = torch.tensor([schema.baseline_row()], dtype=x.dtype).expand_as(x).contiguous()
    rows = torch.arange(len(cases))

    def f(v, r):
        return b.logits(r, replace={"metadata": {"values": v}})

    good = gradients.table_ig(f, x, base, rows, b.targets, 24)
    real = gradients.gauss_legendre
    try:
        gradients.gauss_legendre = lambda n: (torch.full((n,), 1.0 / n), real(n)[1])
        bad = gradients.table_ig(f, x, base, rows, b.targets, 24)
    finally:
        gradients.gauss_legendre = real
    assert float((good - bad).abs().max()) > TOL


def test_note_ig_of_the_engine_equals_the_per_case_explainer(batches):
    from core.cohort.gradients import note_ig
    from core.explain.attributions import merge_word_pieces

    ex, cases, bs = batches
    words = note_ig(bs, [c.note for c in cases], [b.targets for b in bs], 24, merge_word_pieces)
    checked = 0
    for p, b in enumerate(bs):
        for i, case in enumerate(cases):
            ref = _explain(b.pkg, case, "note").note["words"]
            got = words[p][i]
            assert [w["text"] for w in got] == [w["text"] for w in ref]
            np.testing.assert_allclose([w["score"] for w in got], [w["score"] for w in ref], atol=TOL, rtol=0)
            checked += 1
    assert checked == 10


def test_an_engine_run_with_every_part_does_not_import_captum(suite, tmp_path):
    code = (
        "import sys, json\n"
        "from core.cohort import CohortExplainer, item_record\n"
        "from core.data import CohortItem\n"
        "from tiny import make_case\n"
        "c = make_case(0)\n"
        "rec = item_record(CohortItem(case_id='a', label=None, split='test', image_path=None, mask_path=None,\n"
        "                             note=c.note, metadata=dict(c.metadata)))\n"
        f"rows = CohortExplainer({[str(p) for p in suite]!r}).explain([rec])\n"
        "assert all(r['status'] == 'ok' and r['table_top_features'] and r['note_top_words'] for r in rows), rows\n"
        "print(json.dumps(sorted(m for m in ('captum', 'matplotlib') if m in sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**__import__("os").environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
