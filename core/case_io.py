"""Reading cases from files: case folders, .zip and .json bundles, the demo cases. The one reader of them.

Every function returns a :class:`CaseInputs` (raw bytes and values, nothing validated yet) for
``core.Case.from_case_inputs``; validation stays in :mod:`core.case`. The CLI (``--case-dir``), the
dashboard (uploads, demo cases) and the demo-case tools all read through here.

Ground truth that only demo data carries (``label``, the generator's ``evidence`` and ``kind``) is kept
apart from the clinical metadata: lifted out of ``metadata.json`` (or read from ``truth.json``) into
``CaseInputs.truth``, so it never reaches the model's table nor the case's metadata.

A bundle is untrusted input: names that climb out of the bundle, nested archives, links, encrypted
members and oversize members (zip bombs: declared sizes and a total cap, then capped reads) are
refused with a :class:`BundleError` of one sentence a clinician can act on.
"""
from __future__ import annotations

import io
import json
import posixpath
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import FusionLensError

IMAGE_NAMES = ("image.png", "image.jpg", "image.jpeg", "image.tif", "image.tiff")
MASK_NAMES = ("mask.png", "mask.tif", "mask.tiff")
NOTE_NAME, METADATA_NAME, SPECTRUM_NAME, TRUTH_NAME = "note.txt", "metadata.json", "spectrum.csv", "truth.json"
KNOWN = IMAGE_NAMES + MASK_NAMES + (NOTE_NAME, METADATA_NAME, SPECTRUM_NAME, TRUTH_NAME)
TRUTH_KEYS = ("label", "evidence", "kind")    # ground truth of demo data, never clinical metadata
ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".jar", ".zst", ".lz4", ".cab")
ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"7z\xbc\xaf\x27\x1c", b"Rar!", b"BZh", b"\xfd7zXZ",
                 b"\x28\xb5\x2f\xfd")
MAX_MEMBERS = 32
MAX_MEMBER_BYTES = 25 * 2**20        # the image limit of core.case
MAX_TOTAL_BYTES = 60 * 2**20         # everything unpacked together
MAX_JSON_BYTES = 2 * 2**20
MAX_RATIO = 200                      # declared unpacked / packed size of one member
# the order a cohort's demo cases are listed in, by their recorded ``kind`` (then by name): clear cases first,
# hard, referred and ambiguous ones last, so the first case a newcomer meets is one the default model gets right
KIND_ORDER = {"clear": 0, "hard": 2, "referred": 2, "ambiguous": 3}


class BundleError(FusionLensError, ValueError):
    """A case file or bundle that can't be read; ``field`` names the input it is about ("case", "metadata", ...)."""

    def __init__(self, message: str, field: str = "case"):
        super().__init__(message)
        self.field = field


@dataclass
class CaseInputs:
    """Raw inputs for ``Case.from_inputs`` plus what a bundle carries besides: the id, the ground truth."""

    image: bytes | None = None
    mask: bytes | None = None
    note: bytes | str | None = None
    metadata: dict[str, Any] | None = None
    spectrum: bytes | None = None
    case_id: str | None = None
    truth: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def label(self) -> str | None:
        """The true label recorded with a demo case or bundle, or None."""
        return self.truth.get("label")

    def as_kwargs(self) -> dict[str, Any]:
        return {"image": self.image, "mask": self.mask, "note": self.note, "metadata": self.metadata,
                "spectrum": self.spectrum, "case_id": self.case_id}


def _json_object(data: bytes, what: str, field_name: str = "case") -> dict[str, Any]:
    if len(data) > MAX_JSON_BYTES:
        raise BundleError(f"The {what} is larger than {MAX_JSON_BYTES // 2**20} MB; a case's JSON is far smaller.",
                          field_name)
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise BundleError(f"The {what} is not UTF-8 text; save it as UTF-8 JSON.", field_name) from None
    except json.JSONDecodeError as e:
        raise BundleError(f"The {what} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).",
                          field_name) from None
    except RecursionError:
        raise BundleError(f"The {what} is nested too deeply to be a case's JSON.", field_name) from None
    except ValueError:  # e.g. an integer longer than Python converts (4300 digits)
        raise BundleError(f"The {what} holds a number too long to read.", field_name) from None
    if not isinstance(value, dict):
        raise BundleError(f"The {what} must be a JSON object of name: value pairs, not a {type(value).__name__}.",
                          field_name)
    return value


def _add_truth(inputs: CaseInputs, values: dict[str, Any]) -> None:
    """The ground-truth keys of ``values`` into ``inputs.truth`` (the label as text)."""
    for k in TRUTH_KEYS:
        if k in values:
            v = values[k]
            scalar = v is None or isinstance(v, (str, int, float, bool))
            inputs.truth[k] = v if v is None or (scalar and k != "label") else str(v)


def _split_metadata(meta: dict[str, Any], inputs: CaseInputs) -> None:
    """metadata.json may carry the case id and the ground truth next to the table values: lift them out."""
    meta = dict(meta)
    _add_truth(inputs, {k: meta.pop(k) for k in TRUTH_KEYS if k in meta})
    case_id = meta.pop("case_id", None)
    if case_id is not None and inputs.case_id is None:
        inputs.case_id = str(case_id)
    inputs.metadata = meta or None


def read_json_case(data: bytes, name: str = "case.json") -> CaseInputs:
    """A .json bundle: an object with ``note`` (text) and/or ``metadata`` (an object), optionally
    ``case_id`` and the ground truth (``label``, ``evidence``, ``kind``)."""
    obj = _json_object(data, f"file '{name}'")
    inputs = CaseInputs(case_id=str(obj["case_id"]) if obj.get("case_id") is not None else Path(name).stem)
    note = obj.get("note")
    if note is not None and not isinstance(note, str):
        raise BundleError(f"'note' in '{name}' must be text, not {type(note).__name__}.", "note")
    inputs.note = note
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise BundleError(f"'metadata' in '{name}' must be a JSON object of name: value pairs, not "
                          f"{type(meta).__name__}.", "metadata")
    _split_metadata(meta or {}, inputs)
    _add_truth(inputs, {k: obj[k] for k in TRUTH_KEYS if obj.get(k) is not None})
    other = sorted(set(obj) - {"note", "metadata", "case_id", *TRUTH_KEYS})
    if other:
        inputs.warnings.append(f"Ignored in '{name}': {', '.join(other[:10])} (a .json bundle holds note and metadata).")
    if inputs.note is None and inputs.metadata is None:
        raise BundleError(f"'{name}' has neither 'note' nor 'metadata'; a .json bundle needs at least one of them.")
    return inputs


def _safe_member_name(name: str) -> str:
    """The member's path inside the bundle; BundleError for anything that could land outside it."""
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\x00" in name:
        raise BundleError(f"The bundle holds a file with an unsafe name ('{name[:60]}'); refused.")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise BundleError(f"The bundle holds a file whose name climbs out of the bundle ('{name[:60]}'); refused.")
    return posixpath.join(*parts) if parts else ""


def _is_archive(name: str, head: bytes = b"") -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES) or any(head.startswith(m) for m in ARCHIVE_MAGIC)


def _kind(name: str) -> str:
    """A known file name -> the input it holds ("image", "mask", "note.txt", ...)."""
    return "image" if name in IMAGE_NAMES else "mask" if name in MASK_NAMES else name


def _fill(inputs: CaseInputs, found: dict[str, bytes], where: str) -> CaseInputs:
    """The files found (by kind) -> the inputs, metadata and truth split apart."""
    inputs.image, inputs.mask = found.get("image"), found.get("mask")
    inputs.note, inputs.spectrum = found.get(NOTE_NAME), found.get(SPECTRUM_NAME)
    if METADATA_NAME in found:
        _split_metadata(_json_object(found[METADATA_NAME], f"metadata.json {where}", "metadata"), inputs)
    if TRUTH_NAME in found:
        _add_truth(inputs, _json_object(found[TRUTH_NAME], f"truth.json {where}"))
    return inputs


def _check_member(info: zipfile.ZipInfo, path: str) -> None:
    if stat.S_ISLNK(info.external_attr >> 16):
        raise BundleError(f"The bundle holds a link ('{path[:60]}'); links are refused, include the file itself.")
    if info.flag_bits & 0x1:
        raise BundleError(f"'{path[:60]}' in the bundle is encrypted; upload an unencrypted bundle.")
    if _is_archive(path):
        raise BundleError(f"The bundle holds another archive ('{path[:60]}'); nested archives are refused, "
                          "put the case files in one .zip.")
    if info.file_size > MAX_MEMBER_BYTES:
        raise BundleError(f"'{path[:60]}' in the bundle unpacks to {info.file_size / 2**20:.0f} MB; "
                          f"the limit per file is {MAX_MEMBER_BYTES // 2**20} MB.")
    if info.file_size > 2**20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise BundleError(f"'{path[:60]}' in the bundle is compressed more than {MAX_RATIO}:1 (a possible zip bomb); "
                          "refused.")


def read_zip_case(data: bytes, name: str = "case.zip") -> CaseInputs:
    """A .zip bundle with image.png / mask.png / note.txt / metadata.json / spectrum.csv (and truth.json) at its
    top level (or inside one top-level folder). Other files are ignored with a warning."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError):
        raise BundleError(f"'{name}' is not a readable .zip file; zip the case files again and upload it.") from None
    if len(infos) > MAX_MEMBERS:
        raise BundleError(f"'{name}' holds {len(infos)} files; a case bundle holds at most {MAX_MEMBERS}.")
    members: list[tuple[zipfile.ZipInfo, str]] = []
    total = 0
    for info in infos:
        path = _safe_member_name(info.filename)
        if info.is_dir() or not path or path.startswith("__MACOSX/") or posixpath.basename(path).startswith("._"):
            continue
        _check_member(info, path)
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise BundleError(f"The bundle unpacks to more than {MAX_TOTAL_BYTES // 2**20} MB; a case is far smaller.")
        members.append((info, path))
    # one top-level folder around the files is fine (zipping a folder makes one)
    tops = {p.split("/")[0] for _, p in members}
    strip = len(tops) == 1 and all("/" in p for _, p in members)
    inputs = CaseInputs(case_id=next(iter(tops)) if strip else Path(name).stem)
    ignored: list[str] = []
    found: dict[str, bytes] = {}
    for info, path in members:
        rel = path.split("/", 1)[1] if strip else path
        if rel.lower() not in KNOWN:
            ignored.append(rel)
            continue
        try:
            with zf.open(info) as f:
                content = f.read(MAX_MEMBER_BYTES + 1)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError):
            raise BundleError(f"'{rel[:60]}' in the bundle could not be unpacked (damaged or an unsupported "
                              "compression); zip the case again.") from None
        if len(content) > MAX_MEMBER_BYTES:
            raise BundleError(f"'{rel[:60]}' in the bundle unpacks to more than {MAX_MEMBER_BYTES // 2**20} MB; refused.")
        if _is_archive(rel, content[:8]):
            raise BundleError(f"'{rel[:60]}' in the bundle is itself an archive; nested archives are refused.")
        kind = _kind(rel.lower())
        if kind in found:
            raise BundleError(f"The bundle holds more than one {kind.split('.')[0]} file; keep one.")
        found[kind] = content
    if not set(found) - {TRUTH_NAME}:
        raise BundleError(f"'{name}' holds none of image.png, mask.png, note.txt, metadata.json, spectrum.csv; "
                          "name the case files like that.")
    _fill(inputs, found, "in the bundle")
    if ignored:
        inputs.warnings.append(f"Ignored in the bundle: {', '.join(sorted(ignored)[:10])}.")
    return inputs


def read_bundle(name: str, data: bytes) -> CaseInputs:
    """An uploaded bundle by its name: ``.zip`` or ``.json``."""
    suffix = Path(name).suffix.lower()
    if suffix == ".zip":
        return read_zip_case(data, name)
    if suffix == ".json":
        return read_json_case(data, name)
    raise BundleError(f"'{name}' is not a case bundle; upload a .zip of the case files or a .json with note and "
                      "metadata.")


def read_folder(folder: str | Path, case_id: str | None = None) -> CaseInputs:
    """A case folder: ``image.png`` (or .jpg/.tif), ``mask.png`` (or .tif), ``note.txt``, ``metadata.json``,
    ``spectrum.csv`` and an optional ``truth.json``; the case id is the folder name unless given."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"No case folder at {folder}.")
    files = {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_file()}
    found: dict[str, bytes] = {}
    for name in KNOWN:
        kind = _kind(name)
        if name in files and kind not in found:
            if files[name].stat().st_size > MAX_MEMBER_BYTES:
                raise BundleError(f"{files[name].name} in {folder.name} is larger than {MAX_MEMBER_BYTES // 2**20} MB.",
                                  kind.split(".")[0])
            found[kind] = files[name].read_bytes()
    inputs = _fill(CaseInputs(), found, f"of {folder.name}")
    inputs.case_id = case_id or folder.name
    return inputs


def read_case_path(path: str | Path) -> CaseInputs:
    """A case folder, or a .zip / .json bundle file."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in (".zip", ".json"):
        if path.stat().st_size > MAX_TOTAL_BYTES:
            raise BundleError(f"'{path.name}' is larger than {MAX_TOTAL_BYTES // 2**20} MB; a case is far smaller.")
        return read_bundle(path.name, path.read_bytes())
    return read_folder(path)


# ----------------------------------------------------------------------------------------------------------------------
# demo cases: <root>/<cohort>/<case_id>/ holding case files

@dataclass(frozen=True)
class DemoCase:
    cohort: str
    case_id: str
    path: Path

    @property
    def key(self) -> str:
        return f"{self.cohort}/{self.case_id}"


def _demo_kind(folder: Path) -> Any:
    """The demo ``kind`` a case folder records (for the order), without reading the case."""
    for name in (TRUTH_NAME, METADATA_NAME):
        f = folder / name
        try:
            if f.is_file() and f.stat().st_size <= MAX_JSON_BYTES:
                value = json.loads(f.read_text(encoding="utf-8-sig"))
                if isinstance(value, dict) and value.get("kind") is not None:
                    return value["kind"]
        except (OSError, ValueError, RecursionError):
            continue
    return None


def list_demo_cases(roots: Sequence[Path]) -> list[DemoCase]:
    """Every demo case below ``roots``, by cohort; within a cohort clear cases first and ambiguous ones last
    (``KIND_ORDER``), then by name, so the first case a newcomer meets is one the models get right."""
    out, seen = [], set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for cohort in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
            cases = []
            for case in sorted(p for p in cohort.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
                d = DemoCase(cohort.name, case.name, case)
                if d.key not in seen and any((case / n).is_file() for n in KNOWN):
                    seen.add(d.key)
                    kind = _demo_kind(case)
                    cases.append((KIND_ORDER.get(kind, 1) if isinstance(kind, str) else 1, d.case_id, d))
            out += [d for *_, d in sorted(cases, key=lambda t: t[:2])]
    return out


def read_demo_case(demo: DemoCase) -> CaseInputs:
    return read_folder(demo.path, demo.case_id)
