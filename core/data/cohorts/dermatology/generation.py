"""Generation: one case drawn in memory, a cohort drawn to a cache folder (in parallel) and loaded."""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from ...base import Cohort, CohortItem, fit_schema, grouped_split
from .context import _CONTEXTS, _background_findings, _Ring
from .lesion import _lesion_shape, _paint_lesion
from .notes import NOTE_DECOY_VERSION, _metadata, _note, _single_source_metadata, _with_decoys, _without_label_weak
from .optics import _apply_optics, _bubbles, _glare, _hairs, _optics, _ruler, _skin
from .plan import (CONTROL_PLANTED_FEATURE, DERM_SCHEMA, DESCRIPTION, EVIDENCE, GENERATOR_VERSION, LABEL_DESCRIPTIONS,
                   LABELS, SINGLE_SOURCES, _Plan, _plan, _single_source_plan, sample_labels)

#: (probability, painter, name) of each class-independent artifact, drawn in this order
_ARTIFACTS: tuple[tuple[float, Callable[[np.random.Generator, np.ndarray], None], str], ...] = (
    (0.4, _hairs, "hairs"), (0.2, _bubbles, "gel bubbles"), (0.1, _ruler, "ruler"), (0.12, _glare, "glare"))


def _render(rng: np.random.Generator, plan: _Plan, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """-> RGB uint8 image, lesion mask, context-ring mask, facts about what was drawn."""
    optics = _optics(rng, s)
    img = _skin(rng, s)
    L, soft = _lesion_shape(rng, s, plan)
    dout = cv2.distanceTransform((~L.mask).astype(np.uint8), cv2.DIST_L2, 3)
    R = _Ring(s, dout, math.sqrt(float(L.mask.sum()) / math.pi), optics.visible)
    facts: dict[str, Any] = {"background": _background_findings(rng, img, R)}
    if plan.context_cue is not None:
        _CONTEXTS[plan.context_cue](rng, img, R, plan.context_strength)
    _paint_lesion(rng, img, L, soft, plan)          # over its surroundings
    artifacts = []
    for p, draw, name in _ARTIFACTS:
        if rng.random() < p:
            draw(rng, img)
            artifacts.append(name)
    _apply_optics(rng, img, optics)
    if optics.field is not None:
        artifacts.append("dermoscope border")
    img = cv2.GaussianBlur(img, (0, 0), 0.5 * s / 224)   # lens softness
    out = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    facts.update(structures=sorted(set(L.structures)), artifacts=artifacts,
                 lesion_center=[round(L.cx, 1), round(L.cy, 1)], lesion_radius=round(R.r_eq, 1))
    return out, L.mask, R.mask, facts


def _case_id(index: int, n: int) -> str:
    return f"derm-{index:0{max(5, len(str(n - 1)))}d}"


def _png(path: Path, arr: np.ndarray) -> None:
    # zlib level 3: about 3x faster than the default 6 for ~10 % larger files (~45 KB per image at 224 px)
    ok, buf = cv2.imencode(".png", arr[..., ::-1] if arr.ndim == 3 else arr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"could not encode {path.name} as PNG")
    path.write_bytes(buf.tobytes())


def draw_case(seed: int, index: int, label: str, image_size: int = 224, single_source: str | None = None) -> dict[str, Any]:
    """Draw one case in memory: ``image`` (uint8 RGB), ``mask`` / ``context`` (bool) and the item fields.
    Independent streams for plan, metadata, note and image: editing the note templates never moves a pixel.
    ``single_source``: a known-answer control case in which only that source depends on the label."""
    plan_ss, meta_ss, note_ss, image_ss = np.random.SeedSequence([seed, index]).spawn(4)
    if single_source is None:
        plan = _plan(np.random.default_rng(plan_ss), label)
        md = _metadata(np.random.default_rng(meta_ss), label, plan.metadata_kind)
    else:
        plan, decoy = _single_source_plan(np.random.default_rng(plan_ss), label, single_source)
        md = _single_source_metadata(np.random.default_rng(meta_ss), label, single_source, decoy)
    note = _note(np.random.default_rng(note_ss), plan, md)
    if single_source == "note":   # decoy sentences from a stream of their own: the planted ones stay as drawn
        note = _with_decoys(np.random.default_rng(np.random.SeedSequence([seed, index, 4])),
                            _without_label_weak(note, label), label, md)
    image, mask, context, facts = _render(np.random.default_rng(image_ss), plan, image_size)
    extras = {"ambiguous": plan.evidence is None, "lesion_look": plan.lesion_look,
              "lesion_strength": round(plan.lesion_strength, 3), "pigmented": plan.pigmented,
              "context_cue": plan.context_cue, "context_strength": round(plan.context_strength, 3),
              "note_kind": plan.note_kind, "note_class": plan.note_class, "metadata_kind": plan.metadata_kind,
              **facts}
    if single_source is not None:
        extras["single_source"] = single_source
        if single_source == "metadata":
            extras["planted_feature"] = CONTROL_PLANTED_FEATURE
    return {"image": image, "mask": mask, "context": context, "label": label, "note": note, "metadata": md,
            "evidence": plan.evidence, "extras": extras}


def _write_case(job: tuple[Any, ...]) -> dict[str, Any]:
    seed, index, n, label, image_size, root, *rest = job   # rest: (single_source,) for control cohorts
    case = draw_case(seed, index, label, image_size, *rest)
    cid = _case_id(index, n)
    out = Path(root)
    _png(out / "images" / f"{cid}.png", case.pop("image"))
    _png(out / "masks" / f"{cid}.png", case.pop("mask").astype(np.uint8) * 255)
    _png(out / "context" / f"{cid}.png", case.pop("context").astype(np.uint8) * 255)
    return {"case_id": cid, "image_path": f"images/{cid}.png", "mask_path": f"masks/{cid}.png",
            "context_path": f"context/{cid}.png", "group": cid, **case}


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already


def default_cache_dir(n: int, seed: int, image_size: int, single_source: str | None = None) -> Path:
    root = Path(os.environ.get("FUSIONLENS_CACHE") or Path.home() / ".cache" / "fusionlens")
    tail = f"-only-{single_source}" if single_source else ""
    return root / "cohorts" / f"dermatology-s{seed}-n{n}-{image_size}{tail}"


def _params(n: int, seed: int, image_size: int, single_source: str | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"n": n, "seed": seed, "image_size": image_size}
    if single_source is not None:   # absent for ordinary cohorts: their cached index stays valid
        p["single_source"] = single_source
    if single_source == "note":     # the decoy sentences: a note-only cache drawn before them is stale
        p["note_decoys"] = NOTE_DECOY_VERSION
    return p


def _load_index(root: Path, params: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The cached items, or None when the cache is missing, stale (other version / params) or incomplete."""
    try:
        index = json.loads((root / "index.json").read_text())
    except (OSError, ValueError):
        return None
    if index.get("version") != GENERATOR_VERSION or index.get("params") != params:
        return None
    items = index.get("items", [])
    if len(items) != params["n"] or not all((root / it["image_path"]).is_file() for it in items):
        return None
    return items


def _generate(root: Path, n: int, seed: int, image_size: int, workers: int,
              single_source: str | None = None) -> list[dict[str, Any]]:
    for sub in ("images", "masks", "context"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if single_source is None:
        labels = sample_labels(n, seed)
        jobs: list[tuple[Any, ...]] = [(seed, i, n, labels[i], image_size, str(root)) for i in range(n)]
    else:   # controls: balanced classes (a known answer needs every class, not HAM10000's long tail)
        labels = list(np.random.default_rng([seed, n, 7919]).permutation([LABELS[i % len(LABELS)] for i in range(n)]))
        jobs = [(seed, i, n, labels[i], image_size, str(root), single_source) for i in range(n)]
    if workers <= 1 or n < 2 * workers:
        return [_write_case(j) for j in jobs]
    # forkserver: forking a process that already runs threads (torch, streamlit, OpenCV) can deadlock.
    # Like any spawned workers, they re-import the caller's main script: guard it with __name__ == "__main__".
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    try:
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            return list(pool.map(_write_case, jobs, chunksize=max(1, min(64, n // (workers * 8)))))
    except BrokenProcessPool as e:
        raise RuntimeError("The dermatology generator's worker processes failed to start. When calling it from a "
                           "script, put the call under `if __name__ == \"__main__\":`, or pass workers=1.") from e


def generate_dermatology(n: int = 10000, seed: int = 0, cache_dir: str | Path | None = None,
                         workers: int | None = None, image_size: int = 224, single_source: str | None = None) -> Cohort:
    """The generated dermatology cohort (synthetic demo data), drawn once into ``cache_dir`` and loaded
    from its ``index.json`` afterwards. Splits 70/15/15 stratified by label (each case its own group).
    ``single_source`` (one of SINGLE_SOURCES): a known-answer control cohort, balanced classes, in which
    only that source carries the label (every case's ``evidence`` is that source)."""
    if single_source is not None and single_source not in SINGLE_SOURCES:
        raise ValueError(f"single_source must be one of {', '.join(SINGLE_SOURCES)}, not {single_source!r}.")
    if n < 1:
        raise ValueError("n must be at least 1.")
    if not 64 <= image_size <= 1024:
        raise ValueError(f"image_size must be between 64 and 1024 pixels, not {image_size}.")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir(n, seed, image_size, single_source)
    params = _params(n, seed, image_size, single_source)
    records = _load_index(root, params)
    if records is None:
        records = _generate(root, n, seed, image_size, workers or os.cpu_count() or 1, single_source)
        splits = grouped_split([r["case_id"] for r in records], None, [r["label"] for r in records], seed=seed)
        for r, sp in zip(records, splits):
            r["split"] = sp
        tmp = root / "index.json.tmp"
        tmp.write_text(json.dumps({"version": GENERATOR_VERSION, "params": params, "items": records}))
        os.replace(tmp, root / "index.json")   # written last: a half-drawn cache is never mistaken for a full one
    items = [_item(root, r) for r in records]
    schema = fit_schema(DERM_SCHEMA, [it for it in items if it.split == "train"])
    evidence_counts = {e: sum(it.evidence == e for it in items) for e in EVIDENCE}
    info = {"generator": "dermatology", "version": GENERATOR_VERSION, **params,
            "evidence_counts": evidence_counts, "ambiguous": sum(bool(it.extras.get("ambiguous")) for it in items)}
    return Cohort(name="dermatology", labels=list(LABELS), items=items, modalities=["image", "note", "metadata"],
                  schema=schema, description=DESCRIPTION, synthetic=True, label_descriptions=dict(LABEL_DESCRIPTIONS),
                  info=info)


def _item(root: Path, r: dict[str, Any]) -> CohortItem:
    return CohortItem(case_id=r["case_id"], label=r["label"], split=r["split"], image_path=root / r["image_path"],
                      mask_path=root / r["mask_path"], context_path=root / r["context_path"], note=r["note"],
                      metadata=dict(r["metadata"]), evidence=r["evidence"], group=r["group"], extras=dict(r["extras"]))
