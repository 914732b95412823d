"""What-if on one case: edit metadata values, the note, blur the lesion or its context, drop a modality,
and compare the new calibrated prediction, uncertainty and modality Shapley values with the original.

A :class:`WhatIfSession` encodes the original case once (every encoder once). Each edit re-encodes
**only the modalities it changes**; the others enter as the original's encoder outputs, so a metadata
or note edit costs one small encoder pass, the fusion and the head. Shapley values of both cases are
for the original's predicted class, so they can be read side by side.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .case import Case, CaseError, clean_note
from .package import Package, Prediction, make_prediction, posterior
from .uncertainty import mean_pairwise_symmetric_kl

BLUR_REGIONS = ("lesion", "context")


@dataclass
class Edit:
    """What to change. ``metadata``: name -> new value (None or "" clears it); ``note``: the new note
    (None = unchanged, "" = remove it); ``blur``: "lesion" or "context"; ``drop``: modalities to remove."""

    metadata: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    blur: str | None = None
    drop: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not self.metadata and self.note is None and self.blur is None and not self.drop


@dataclass
class Outcome:
    prediction: Prediction
    shapley: dict[str, Any]
    fused: np.ndarray

    def summary(self) -> dict[str, Any]:
        p = self.prediction
        return {"label": p.label, "probability": float(p.calibrated[p.label_index]),
                "probabilities": dict(zip(p.labels, map(float, p.calibrated))),
                "normalised_entropy": p.uncertainty["normalised_entropy"], "aleatoric": p.uncertainty["aleatoric"],
                "epistemic": p.uncertainty["epistemic"], "refer": bool(p.refer),
                "modality_shapley": {m: float(v) for m, v in self.shapley["values"].items()},
                "present": dict(p.present)}


@dataclass
class WhatIfResult:
    original: Outcome
    edited: Outcome
    changes: list[str]                  # one sentence per change made
    reencoded: list[str]                # modalities whose encoder ran for the edit
    seconds: float
    case: Case                          # the edited case

    def changed(self) -> dict[str, bool]:
        """Which headline numbers changed: label, referral flag, top modality."""
        a, b = self.original.summary(), self.edited.summary()
        top = lambda s: max(s["modality_shapley"], key=s["modality_shapley"].get) if s["modality_shapley"] else None  # noqa: E731
        return {"label": a["label"] != b["label"], "refer": a["refer"] != b["refer"], "top_modality": top(a) != top(b)}

    def to_dict(self) -> dict[str, Any]:
        return {"original": self.original.summary(), "what_if": self.edited.summary(), "changes": self.changes,
                "changed": self.changed(), "reencoded": self.reencoded, "seconds": round(self.seconds, 4),
                "target": self.original.prediction.label,
                "notice": "Research use only, not a medical device."}


def blur_region(case: Case, region: str) -> Case:
    """The case with its lesion (or the context ring around it) blurred; the mask is the uploaded one
    or, without one, the automatic lesion mask."""
    from .imaging import auto_lesion_mask, context_ring, keep_region

    if region not in BLUR_REGIONS:
        raise ValueError(f"blur must be one of: {', '.join(BLUR_REGIONS)}.")
    if case.image is None:
        raise CaseError({"image": "The case has no image to blur."})
    mask = case.mask if case.mask is not None else auto_lesion_mask(case.image)
    area = mask if region == "lesion" else context_ring(mask)
    return replace(case, image=keep_region(case.image, ~area), extras=dict(case.extras))


def apply_edit(case: Case, edit: Edit, schema: Any = None) -> tuple[Case, list[str], set[str]]:
    """-> (edited case, sentences describing each change, modalities changed). Values are checked by
    the package's schema (CaseError naming the field)."""
    changes: list[str] = []
    touched: set[str] = set()
    new = replace(case, extras={k: v for k, v in case.extras.items() if k != "fingerprint"})
    bad = [m for m in edit.drop if m not in ("image", "note", "metadata", "spectrum")]
    if bad:
        raise ValueError(f"unknown modality '{bad[0]}' to drop; use image, note, metadata or spectrum.")
    if edit.metadata:
        meta = dict(case.metadata or {})
        for k, v in edit.metadata.items():
            before = meta.get(k)
            if v is None or (isinstance(v, str) and not v.strip()):
                meta.pop(k, None)
                changes.append(f"{k}: {before} → (missing)")
            else:
                meta[k] = v
                if str(before) != str(v):
                    changes.append(f"{k}: {before if before is not None else '(missing)'} → {v}")
        if schema is not None:
            schema.validate(meta)  # a bad value: CaseError("metadata.<name>": one sentence)
        new.metadata = meta or None
        touched.add("metadata")
    if edit.note is not None:
        try:
            note = clean_note(edit.note)
        except ValueError as e:
            raise CaseError({"note": str(e)[0].upper() + str(e)[1:]}) from None
        if note != case.note:
            changes.append("note edited" if note else "note removed")
        new.note = note
        touched.add("note")
    if edit.blur:
        new = blur_region(new, edit.blur)
        changes.append(f"{edit.blur} blurred")
        touched.add("image")
    for m in edit.drop:
        setattr(new, m, None)
        if m == "image":
            new.mask = None
        changes.append(f"{m} dropped")
        touched.add(m)
    return new, changes, touched


class WhatIfSession:
    """The original case of one package, encoded once; ``run(edit)`` answers each what-if.

    Each answer is one encoder pass for the edited modalities and **one** fusion pass over every
    coalition of the present modalities (2^k rows): the full coalition is the prediction (its fused
    vector feeds the MC-dropout samples of the head), all of them give the exact Shapley values, and the
    single-modality rows the modality disagreement. The numbers equal ``Package.predict`` and
    ``core.explain.modality.modality_shapley`` on the edited case (the tests check it)."""

    def __init__(self, package: Package, case: Case, mc_samples: int | None = None):
        self.package, self.case, self.mc_samples = package, case, mc_samples
        model = package.model
        inputs, present, warnings = package.prepare([case])
        with torch.no_grad():
            feats = model.encode(inputs, present)
            det = model.fuse_and_classify(feats, present)
        self.target = int(det.logits[0].argmax())
        self.features = {m: feats[j].index(torch.tensor([0])) for j, m in enumerate(model.modalities) if bool(present[0, j])}
        self.original = self._outcome(case, self.features, present, warnings[0])

    def _outcome(self, case: Case, raw: Mapping[str, Any], present: torch.Tensor, warnings: list[str]) -> Outcome:
        import itertools

        from .explain.modality import exact_shapley
        from .fusion import case_diagnostics

        pkg, model = self.package, self.package.model
        mods = model.modalities
        players = [m for j, m in enumerate(mods) if bool(present[0, j])]
        coalitions = [frozenset(c) for r in range(len(players) + 1) for c in itertools.combinations(players, r)]
        masks = torch.zeros(len(coalitions), len(mods), dtype=torch.bool)
        for i, c in enumerate(coalitions):
            for m in c:
                masks[i, mods.index(m)] = True
        inputs = {m: (raw[m].repeat(int(masks[:, j].sum())) if bool(masks[:, j].any()) else None) for j, m in enumerate(mods)}
        with torch.no_grad():
            feats = model.encode(inputs, masks)
            fused, diag = model.fusion(feats, masks)
            logits, _ = model.head(fused)
            full = coalitions.index(frozenset(players))
            T = pkg.mc_samples if self.mc_samples is None else self.mc_samples
            mc_logits, mc_log_var = model.head(fused[full:full + 1], max(T, 1), torch.Generator().manual_seed(0))
        post = posterior(logits[full:full + 1], mc_logits, mc_log_var, pkg.temperature)
        probs = torch.softmax(logits / pkg.temperature, -1)
        v = {c: float(p[self.target]) for c, p in zip(coalitions, probs)}
        values = exact_shapley(players, v)
        shapley = {"values": values, "full": v[frozenset(players)], "none": v[frozenset()],
                   "top_modality": max(values, key=values.get) if values else None}
        singles = [i for i, c in enumerate(coalitions) if len(c) == 1]
        logp = torch.log_softmax(logits[singles] / pkg.temperature, -1)
        diagnostics = case_diagnostics(diag, full)
        diagnostics["modality_disagreement"] = (float(mean_pairwise_symmetric_kl(logp)) if len(singles) >= 2
                                                else float("nan"))
        pred = make_prediction(pkg, post, 0, {m: bool(present[0, j]) for j, m in enumerate(mods)}, diagnostics,
                               list(warnings), case.case_id)
        return Outcome(pred, shapley, fused[full].numpy())

    def run(self, edit: Edit) -> WhatIfResult:
        t0 = time.perf_counter()
        new, changes, touched = apply_edit(self.case, edit, self.package.schema)
        keep = {m: f for m, f in self.features.items() if m not in touched}
        inputs, present, warnings = self.package.prepare([new], set(keep))
        model = self.package.model
        raw = dict(keep)
        with torch.no_grad():
            for j, m in enumerate(model.modalities):
                if m in keep and not bool(present[0, j]):
                    raw.pop(m)
                elif m not in keep and bool(present[0, j]):
                    raw[m] = model.encoders[m](**inputs[m])          # only the edited modalities are encoded
        outcome = self._outcome(new, raw, present, warnings[0])
        reencoded = sorted(m for m in touched if m in raw and m not in keep)
        return WhatIfResult(self.original, outcome, changes or ["no change"], reencoded, time.perf_counter() - t0, new)


def what_if(package: Package, case: Case, edit: Edit, mc_samples: int | None = None) -> WhatIfResult:
    """One what-if (encodes the original too; keep a WhatIfSession to answer several)."""
    return WhatIfSession(package, case, mc_samples).run(edit)


def parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    """``["age=40", "sex=male", "site="]`` -> {"age": "40", "sex": "male", "site": None}."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects name=value, got '{pair}'.")
        out[key.strip()] = value.strip() or None
    return out


def format_result(r: WhatIfResult) -> str:
    a, b = r.original.summary(), r.edited.summary()
    lines = [f"changes: {'; '.join(r.changes)} (re-encoded: {', '.join(r.reencoded) or 'nothing'}; {r.seconds * 1000:.0f} ms)",
             f"{'':22s}{'original':>14s}{'what-if':>14s}",
             f"{'label':22s}{a['label']:>14s}{b['label']:>14s}{'  *' if a['label'] != b['label'] else ''}"]
    for k in a["probabilities"]:
        lines.append(f"{'p(' + k + ')':22s}{a['probabilities'][k]:14.3f}{b['probabilities'][k]:14.3f}")
    lines.append(f"{'normalised entropy':22s}{a['normalised_entropy']:14.3f}{b['normalised_entropy']:14.3f}")
    lines.append(f"{'refer':22s}{str(a['refer']):>14s}{str(b['refer']):>14s}{'  *' if a['refer'] != b['refer'] else ''}")
    for m in a["modality_shapley"]:
        bv = b["modality_shapley"].get(m)
        lines.append(f"{'Shapley ' + m:22s}{a['modality_shapley'][m]:+14.3f}{'' if bv is None else format(bv, '+14.3f'):>14s}")
    return "\n".join(lines)


def nearest_cases(table: Any, fused: np.ndarray, package_sha256: str, k: int = 5,
                  exclude: str | None = None) -> list[dict[str, Any]]:
    """The ``k`` cases of a results table (rows of the package with this sha256) nearest to ``fused`` in the
    fused space (cosine distance): id, label, prediction, distance, thumbnail."""
    rows = [r for r in (table.to_pylist() if hasattr(table, "to_pylist") else table)
            if r.get("package_sha256") == package_sha256 and r.get("status") == "ok" and r.get("fused") is not None
            and r.get("case_id") != exclude]
    if not rows:
        return []
    X = np.asarray([np.asarray(r["fused"], np.float32) for r in rows])
    q = np.asarray(fused, np.float32)
    d = 1 - (X @ q) / (np.linalg.norm(X, axis=1) * np.linalg.norm(q) + 1e-12)
    order = np.argsort(d)[:k]
    return [{"case_id": rows[i]["case_id"], "label": rows[i].get("label"), "prediction": rows[i].get("pred_label"),
             "distance": float(d[i]), "thumbnail": rows[i].get("thumbnail")} for i in order]


def bench(model_dir: str, case_dirs: Sequence[str], repeats: int = 5) -> dict[str, Any]:
    """Seconds per what-if answer (after the session's one-time encoding) for a metadata edit, a note edit and a
    lesion blur, against one plain ``Package.predict`` of the same case (which encodes everything), per case."""
    import statistics

    from .package import load_package

    pkg = load_package(model_dir)
    times: dict[str, list[float]] = {"metadata": [], "note": [], "blur_lesion": [], "plain_predict": [], "session_start": [],
                                     "metadata_cpu": [], "note_cpu": []}
    for d in case_dirs:
        case = Case.from_folder(d)
        t0 = time.perf_counter()
        session = WhatIfSession(pkg, case)
        times["session_start"].append(time.perf_counter() - t0)
        schema = pkg.schema
        num = next((f for f in schema.features if f.type == "numeric"), None) if schema is not None else None
        for r in range(repeats):
            if num is not None:
                lo, hi = (num.min or 0.0), (num.max or 100.0)
                c0 = time.process_time()
                times["metadata"].append(session.run(Edit(metadata={num.name: lo + (hi - lo) * (r + 1) / (repeats + 2)})).seconds)
                times["metadata_cpu"].append(time.process_time() - c0)
            if "note" in pkg.modalities:
                c0 = time.process_time()
                times["note"].append(session.run(Edit(note=f"Lesion growing for {r + 2} months, bleeding on contact.")).seconds)
                times["note_cpu"].append(time.process_time() - c0)
            t0 = time.perf_counter()
            pkg.predict(case)
            times["plain_predict"].append(time.perf_counter() - t0)
        if case.image is not None and "image" in pkg.modalities:
            times["blur_lesion"].append(session.run(Edit(blur="lesion")).seconds)
    import os

    out: dict[str, Any] = {"model": str(model_dir), "cases": len(case_dirs), "repeats": repeats,
                           "torch_threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 1)}
    for k, v in times.items():
        if v:
            s = sorted(v)
            out[k] = {"median_s": round(statistics.median(s), 4), "p90_s": round(s[min(len(s) - 1, int(0.9 * len(s)))], 4),
                      "n": len(s)}
    return out


if __name__ == "__main__":  # python -m core.whatif MODEL CASE_DIR [CASE_DIR ...]: the what-if latency figures
    import json
    import os
    import sys

    torch.set_num_threads(int(os.environ.get("FUSIONLENS_WHATIF_THREADS", "1")))  # one small pass: threads only contend
    print(json.dumps(bench(sys.argv[1], sys.argv[2:]), indent=2))
