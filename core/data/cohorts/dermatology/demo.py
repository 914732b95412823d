"""Demo cases: test-split cases of each kind written as case folders."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from ...base import Cohort, CohortItem
from .plan import DEMO_KINDS

_KIND_TEST: dict[str, Callable[[CohortItem], bool]] = {
    "lesion": lambda it: it.evidence == "lesion" and it.note is not None,
    "context": lambda it: it.evidence == "context" and it.note is not None,
    "note": lambda it: it.evidence == "note",
    "metadata": lambda it: it.evidence == "metadata" and it.note is not None,
    "missing-note": lambda it: it.note is None and it.evidence in ("lesion", "context"),
    "ambiguous": lambda it: bool(it.extras.get("ambiguous")),
}


def _pick_demo(items: list[CohortItem], per_kind: int) -> list[tuple[str, CohortItem]]:
    """``per_kind`` test cases per kind, no case twice, preferring a different label each time."""
    used: set[str] = set()
    picked: list[tuple[str, CohortItem]] = []
    for kind in DEMO_KINDS:
        pool = [it for it in items if _KIND_TEST[kind](it) and it.case_id not in used]
        labels_seen: set[str] = set()
        for _ in range(per_kind):
            fresh = [it for it in pool if it.label not in labels_seen and it.case_id not in used]
            choice = fresh[0] if fresh else next((it for it in pool if it.case_id not in used), None)
            if choice is None:
                break
            used.add(choice.case_id)
            labels_seen.add(choice.label)
            picked.append((kind, choice))
    return picked


def write_demo_cases(cohort: Cohort, dest: str | Path, per_kind: int = 2) -> list[Path]:
    """Write test-split cases as ``dest/<case_id>/`` (image.png, mask.png, note.txt when there is a note,
    metadata.json with the label, the evidence and the demo ``kind``): lesion-, context-, note- and
    metadata-decided cases, cases without a note and ambiguous cases."""
    dest = Path(dest)
    folders = []
    for kind, it in _pick_demo(sorted(cohort.split("test"), key=lambda it: it.case_id), per_kind):
        folder = dest / it.case_id
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(it.image_path, folder / "image.png")
        shutil.copyfile(it.mask_path, folder / "mask.png")
        if it.note:
            (folder / "note.txt").write_text(it.note + "\n", encoding="utf-8")
        meta = {**it.metadata, "label": it.label, "evidence": it.evidence, "kind": kind}
        (folder / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        folders.append(folder)
    return folders
