"""One row per (case, package): the batched explainer behind ``python -m core explain-cohort``.

:class:`CohortExplainer` loads its packages once and explains a batch of cases at a time:

* every frozen encoder shared by several packages (same ``encoder_fingerprint``) runs **once per batch**
  for all of them, every other encoder once per batch and package;
* the prediction (MC-dropout samples of the head drawn per case with the same generator seed as
  ``Package.predict``, so a row does not depend on which batch its case fell into), exact modality
  Shapley values (all coalitions of all cases in one pass), Grad-CAM and the table's integrated
  gradients (the batch's cases x steps in one pass, without Captum) are computed from those features;
* Grad-CAM of a plain image encoder back-propagates from the shared last-stage maps only (not through
  the backbone), and the note's integrated gradients run case by case at the note's own length through
  the shared text encoder once for all packages, one backward pass each (``core.cohort.gradients``).

The quantities are those of ``core.explain.explain_case`` (the per-case ``loop`` engine calls it
case by case; the tests check both give the same rows). A case that cannot be read or explained
becomes a row with ``status = "failed"`` and a one-sentence ``error``; the others go on.
"""
from __future__ import annotations

import copy
import itertools
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..case import Case, CaseError
from ..explain.attributions import merge_word_pieces
from ..fusion import case_diagnostics
from ..package import Package, load_package, posterior, referral
from .gradients import fast_cam_encoder, image_features, image_stages, note_ig, table_ig, tail_gradcam
from .rows import (ROW_PARTS, CaseResult, CohortError, failed_row, make_row, one_sentence, record_case,
                   shapley_from_values)

IG_STEPS = 24           # the note / table integrated-gradients steps of explain_case's defaults


# ---- the batched engine -----------------------------------------------------------------------------------------------

class _Batch:
    """One package's view of a batch of cases: raw encoder outputs of the present rows per modality."""

    def __init__(self, pkg: Package, cases: Sequence[Case], shared: dict[str, tuple[Any, Any, Any]], maps: bool = False):
        """``maps``: keep the image encoder's stage maps too (the last-stage Grad-CAM starts from them)."""
        self.pkg, self.model = pkg, pkg.model
        keys = {m: pkg.encoder_fingerprint(m) for m in pkg.modalities}
        skip = {m for m, k in keys.items() if k is not None and k in shared}
        self.inputs, self.present, _ = pkg.prepare(cases, skip)
        self.raw: dict[str, Any] = {}
        self.maps: list[torch.Tensor] | None = None   # the image rows' stage maps (plain image encoders only)
        self.targets: torch.Tensor | None = None      # the explained class of each case (set by the explainer)
        with torch.no_grad():
            for j, m in enumerate(pkg.modalities):
                if not bool(self.present[:, j].any()):
                    continue
                if m in skip:
                    self.inputs[m], self.raw[m], extra = shared[keys[m]]
                    if m == "image":
                        self.maps = extra
                    continue
                enc, extra = self.model.encoders[m], None
                if m == "image" and maps and fast_cam_encoder(enc):
                    extra = self.maps = image_stages(enc, self.inputs[m]["pixels"])
                    self.raw[m] = image_features(enc, extra)
                else:
                    self.raw[m] = enc(**self.inputs[m])
                if keys[m] is not None:
                    shared[keys[m]] = (self.inputs[m], self.raw[m], extra)
        # position of case i among the present rows of modality j (-1 when absent)
        self.pos = (self.present.long().cumsum(0) - 1).masked_fill(~self.present, -1)

    def gather(self, rows: torch.Tensor, present: torch.Tensor | None = None, replace: Mapping[str, Any] | None = None):
        """Encoder inputs for the cases ``rows`` (repeats allowed) with presence ``present`` (default
        the cases' own); ``replace`` gives a modality's input for all of these rows."""
        present = self.present[rows] if present is None else present
        inputs: dict[str, Any] = {}
        for j, m in enumerate(self.model.modalities):
            col = present[:, j]
            if replace and m in replace:
                inputs[m] = replace[m]
            elif bool(col.any()):
                inputs[m] = self.raw[m].index(self.pos[rows[col], j])
            else:
                inputs[m] = None
        return inputs, present

    def logits(self, rows: torch.Tensor, present: torch.Tensor | None = None, replace: Mapping[str, Any] | None = None):
        inputs, present = self.gather(rows, present, replace)
        feats = self.model.encode(inputs, present)
        fused, _ = self.model.fusion(feats, present)
        return self.model.head(fused)[0] / self.pkg.temperature


class _BatchImageTarget(nn.Module):
    """pixels of the batch's image rows -> calibrated logits, the other modalities held at their features
    (the batched form of core.explain.context.ImageTargetModel); the encoder is a private copy."""

    def __init__(self, b: _Batch, rows: torch.Tensor, encoder: nn.Module):
        super().__init__()
        self.b, self.rows, self.encoder = b, rows, encoder

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if not pixels.requires_grad and pixels.is_leaf:
            pixels.requires_grad_(True)  # the weights are frozen; gradients flow from the input
        fixed = {k: v for k, v in self.b.inputs["image"].items() if k != "pixels"}
        return self.b.logits(self.rows, replace={"image": self.encoder(pixels=pixels, **fixed)})


class CohortExplainer:
    """Loads packages once; ``explain(records)`` -> rows (one per record and package)."""

    def __init__(self, model_dirs: Sequence[str | Path], parts: Sequence[str] = ROW_PARTS, ig_steps: int = IG_STEPS,
                 threads: int | None = None):
        if threads:
            torch.set_num_threads(int(threads))
        bad = [p for p in parts if p not in ROW_PARTS]
        if bad:
            raise CohortError(f"unknown part '{bad[0]}'; choose from: {', '.join(ROW_PARTS)}.")
        self.packages = [load_package(d) for d in model_dirs]
        self.parts = tuple(parts)
        self.ig_steps = ig_steps
        self._cam_encoders: dict[str, nn.Module] = {}

    # -- public ---------------------------------------------------------------------------------------------------------
    def explain(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        t0, c0 = time.perf_counter(), time.process_time()
        rows: list[dict[str, Any]] = []
        cases, good = [], []
        for rec in records:
            try:
                cases.append(record_case(rec))
                good.append(rec)
            except (CaseError, ValueError, OSError) as e:
                rows += [failed_row(rec, p.name, p.sha256, one_sentence(e)) for p in self.packages]
        if good:
            try:
                rows += self._explain_cases(good, cases, t0)
            except (CaseError, ValueError, RuntimeError) as e:
                if len(good) == 1:
                    rows += [failed_row(good[0], p.name, p.sha256, one_sentence(e)) for p in self.packages]
                else:  # isolate the bad case(s): each case alone
                    for rec, case in zip(good, cases):
                        try:
                            rows += self._explain_cases([rec], [case], time.perf_counter())
                        except (CaseError, ValueError, RuntimeError) as e1:
                            rows += [failed_row(rec, p.name, p.sha256, one_sentence(e1)) for p in self.packages]
        # CPU seconds of this process (all its threads) per case of the batch: comparable across engines and
        # machine load, unlike wall time
        cpu = (time.process_time() - c0) / max(len(records), 1)
        for r in rows:
            r["cpu_seconds"] = cpu
        order = {r["case_id"]: i for i, r in enumerate(records)}
        names = {p.name: i for i, p in enumerate(self.packages)}
        rows.sort(key=lambda r: (order.get(r["case_id"], 0), names.get(r["package"], 0)))
        return rows

    # -- internals ------------------------------------------------------------------------------------------------------
    def _explain_cases(self, recs: Sequence[Mapping[str, Any]], cases: Sequence[Case], t0: float) -> list[dict[str, Any]]:
        shared: dict[str, tuple[Any, Any, Any]] = {}
        results: list[tuple[Package, list[CaseResult]]] = []
        batches: list[_Batch] = []
        for pkg in self.packages:
            usable = [i for i, c in enumerate(cases) if any(c.present().get(m) for m in pkg.modalities)]
            if len(usable) < len(cases):
                raise CaseError({"case": f"The case has none of the inputs of '{pkg.name}' ({', '.join(pkg.modalities)})."})
            b = _Batch(pkg, cases, shared, maps="cam_summary" in self.parts)
            batches.append(b)
            results.append((pkg, self._package_results(b, cases)))
        if "note_top" in self.parts:
            self._notes(batches, cases, [res for _, res in results])
        seconds = (time.perf_counter() - t0) / len(cases)
        rows = []
        for i, (rec, case) in enumerate(zip(recs, cases)):
            for pkg, res in results:
                rows.append(make_row(pkg, rec, case, res[i], self.parts, seconds))
        return rows

    def _package_results(self, b: _Batch, cases: Sequence[Case]) -> list[CaseResult]:
        pkg, model = b.pkg, b.model
        n = len(cases)
        rows = torch.arange(n)
        with torch.no_grad():
            inputs, present = b.gather(rows)
            det = model.fuse_and_classify(model.encode(inputs, present), present)
        targets = det.logits.argmax(-1)
        b.targets = targets
        T = pkg.mc_samples
        out = []
        for i in range(n):  # MC samples per case with the generator seed of Package.predict: batch-independent rows
            with torch.no_grad():
                mc_logits, mc_log_var = model.head(det.fused[i:i + 1], max(T, 1), torch.Generator().manual_seed(0))
            post = posterior(det.logits[i:i + 1], mc_logits, mc_log_var, pkg.temperature)
            u = post.uncertainty
            value = float(u.normalised_entropy[0])
            out.append(CaseResult(
                calibrated=post.calibrated[0].numpy(),
                uncertainty={"predictive_entropy": float(u.predictive_entropy[0]), "normalised_entropy": value,
                             "aleatoric": float(u.aleatoric[0]), "epistemic": float(u.epistemic[0])},
                refer=referral(value, pkg.referral_threshold)[0], diagnostics=case_diagnostics(det.diagnostics, i),
                present={m: bool(b.present[i, j]) for j, m in enumerate(pkg.modalities)}, target=int(targets[i]),
                fused=det.fused[i].numpy() if "embedding" in self.parts else None))
        if "modality" in self.parts:
            self._shapley(b, targets, out)
        if "cam_summary" in self.parts and "image" in pkg.modalities:
            self._cam(b, targets, out)
        if "table_top" in self.parts and "metadata" in pkg.modalities:
            self._table(b, cases, targets, out)
        return out

    def _notes(self, batches: Sequence[_Batch], cases: Sequence[Case], results: Sequence[list[CaseResult]]) -> None:
        """Note IG of every package that uses notes, the packages sharing a frozen note encoder together."""
        groups: dict[Any, list[int]] = {}
        for p, b in enumerate(batches):
            if "note" in b.model.modalities:
                key = b.pkg.encoder_fingerprint("note") or id(b.model.encoders["note"])
                groups.setdefault(key, []).append(p)
        notes = [c.note for c in cases]
        for members in groups.values():
            words = note_ig([batches[p] for p in members], notes, [batches[p].targets for p in members], self.ig_steps,
                            merge_word_pieces)
            for k, p in enumerate(members):
                for i, w in enumerate(words[k]):
                    if w is not None:
                        results[p][i].note_words = w

    def _shapley(self, b: _Batch, targets: torch.Tensor, out: list[CaseResult]) -> None:
        mods = b.model.modalities
        row_idx, masks, keys = [], [], []
        for i in range(len(out)):
            players = [m for j, m in enumerate(mods) if bool(b.present[i, j])]
            for r in range(len(players) + 1):
                for c in itertools.combinations(players, r):
                    mask = torch.zeros(len(mods), dtype=torch.bool)
                    for m in c:
                        mask[mods.index(m)] = True
                    row_idx.append(i)
                    masks.append(mask)
                    keys.append((i, frozenset(c)))
        rows = torch.tensor(row_idx)
        with torch.no_grad():
            probs = torch.softmax(b.logits(rows, torch.stack(masks)), -1)
        values: dict[int, dict[frozenset, float]] = {}
        for (i, c), p, r in zip(keys, probs, row_idx):
            values.setdefault(i, {})[c] = float(p[targets[r]])
        for i, res in enumerate(out):
            players = [m for j, m in enumerate(mods) if bool(b.present[i, j])]
            res.shapley = shapley_from_values(players, values[i])

    def _cam_encoder(self, pkg: Package) -> nn.Module:
        """A private copy of the image encoder (pytorch-grad-cam hooks it), one per package and explainer."""
        key = f"{pkg.path}:{pkg.sha256}"
        if key not in self._cam_encoders:
            self._cam_encoders[key] = copy.deepcopy(pkg.model.encoders["image"])
        return self._cam_encoders[key]

    def _cam(self, b: _Batch, targets: torch.Tensor, out: list[CaseResult]) -> None:
        j = b.model.modalities.index("image")
        rows = b.present[:, j].nonzero().squeeze(1)
        if len(rows) == 0:
            return
        if b.maps is not None:  # plain image encoder: backward from the shared last-stage maps only
            pos = b.pos[rows, j]
            pixels = b.inputs["image"]["pixels"]
            maps = tail_gradcam(b, rows, targets, b.maps[-1][pos], [f[pos].mean(dim=(2, 3)) for f in b.maps[:-1]],
                                (pixels.shape[-1], pixels.shape[-2]))
            for k, i in enumerate(rows.tolist()):
                out[i].cam = maps[k]
            return
        from pytorch_grad_cam import GradCAM   # a dual-expert or other image encoder: the whole-model Grad-CAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        enc = self._cam_encoder(b.pkg)
        image_inputs = b.inputs["image"]
        dual = enc.dual_expert

        layer = (enc.cam_layers("global") if dual else enc.cam_layers())["last stage"]
        cam_targets = [ClassifierOutputTarget(int(targets[i])) for i in rows]
        with GradCAM(model=_BatchImageTarget(b, rows, enc), target_layers=[layer]) as cam, torch.enable_grad():
            maps = cam(input_tensor=image_inputs["pixels"].clone(), targets=cam_targets)
        for k, i in enumerate(rows.tolist()):
            out[i].cam = np.asarray(maps[k], np.float32)

    def _table(self, b: _Batch, cases: Sequence[Case], targets: torch.Tensor, out: list[CaseResult]) -> None:
        j = b.model.modalities.index("metadata")
        rows = b.present[:, j].nonzero().squeeze(1)
        if len(rows) == 0:
            return
        schema = b.model.encoders["metadata"].schema
        x = b.inputs["metadata"]["values"]
        base = torch.tensor([schema.baseline_row()], dtype=x.dtype).expand_as(x).contiguous()

        def f(v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            return b.logits(r, replace={"metadata": {"values": v}})

        ig = table_ig(f, x, base, rows, targets[rows], self.ig_steps)
        for k, i in enumerate(rows.tolist()):
            values, _ = schema.validate(cases[i].metadata or {})
            out[i].table_rows = [{"name": feat.name, "value": values.get(feat.name), "integrated_gradients": float(ig[k, s].sum())}
                                 for feat, s in zip(schema.features, schema.slices)]


# ---- the naive engine: explain_case case by case (the benchmark's baseline, and the tests' reference) --------------

class LoopExplainer(CohortExplainer):
    """The same rows from ``core.explain.explain_case``, one case and one package at a time."""

    def _explain_cases(self, recs, cases, t0):
        from ..explain import explain_case

        rows = []
        for rec, case in zip(recs, cases):
            t1 = time.perf_counter()
            results = []
            for pkg in self.packages:
                parts = [p for p, want in (("cam", "cam_summary"), ("note", "note_top"), ("table", "table_top"),
                                           ("modality", "modality")) if want in self.parts]
                # the batched engine's map: plain Grad-CAM on the last stage (not the package's 'auto' default)
                ex = explain_case(pkg, case, parts=parts, ig_steps=self.ig_steps, shapley_samples=0,
                                  cam_methods=("gradcam",), cam_layer="last stage")
                p = ex.prediction
                fused = None
                if "embedding" in self.parts:
                    det, _, _, _ = pkg.run([case], 0)
                    fused = det.fused[0].numpy()
                results.append((pkg, CaseResult(
                    calibrated=p.calibrated, uncertainty=p.uncertainty, refer=p.refer, diagnostics=p.diagnostics,
                    present=p.present, target=ex.target, shapley=ex.modality, cam=ex.cams.get("gradcam"),
                    note_words=ex.note["words"] if ex.note else None,
                    table_rows=ex.table["features"] if ex.table else None, fused=fused)))
            seconds = time.perf_counter() - t1
            rows += [make_row(pkg, rec, case, r, self.parts, seconds) for pkg, r in results]
        return rows
