"""Case inputs from files: uploaded bundles (.zip / .json), demo case folders, the metadata form.

No streamlit here: these functions take bytes and paths and return raw inputs for
``core.Case.from_inputs``; every refusal is a ``ValueError`` with one sentence a clinician can act on.
A bundle is untrusted input: names that climb out of the bundle, nested archives, links, encrypted
members and oversize members (zip bombs: declared sizes and a total cap, then capped reads) are refused.
"""
from __future__ import annotations

import io
import json
import posixpath
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from core import CaseError

IMAGE_NAMES = ("image.png", "image.jpg", "image.jpeg", "image.tif", "image.tiff")
MASK_NAMES = ("mask.png", "mask.tif", "mask.tiff")
NOTE_NAME, METADATA_NAME, SPECTRUM_NAME = "note.txt", "metadata.json", "spectrum.csv"
KNOWN = IMAGE_NAMES + MASK_NAMES + (NOTE_NAME, METADATA_NAME, SPECTRUM_NAME)
ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".jar", ".zst", ".lz4", ".cab")
ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"7z\xbc\xaf\x27\x1c", b"Rar!", b"BZh", b"\xfd7zXZ",
                 b"\x28\xb5\x2f\xfd")
MAX_MEMBERS = 32
MAX_MEMBER_BYTES = 25 * 2**20        # the image limit of core.case
MAX_TOTAL_BYTES = 60 * 2**20         # everything unpacked together
MAX_JSON_BYTES = 2 * 2**20
MAX_RATIO = 200                      # declared unpacked / packed size of one member


@dataclass
class CaseInputs:
    """Raw inputs for ``Case.from_inputs`` plus what a bundle may carry besides (true label, id)."""

    image: bytes | None = None
    mask: bytes | None = None
    note: bytes | str | None = None
    metadata: dict[str, Any] | None = None
    spectrum: bytes | None = None
    label: str | None = None
    case_id: str | None = None
    warnings: list[str] = field(default_factory=list)

    def as_kwargs(self) -> dict[str, Any]:
        return {"image": self.image, "mask": self.mask, "note": self.note, "metadata": self.metadata,
                "spectrum": self.spectrum, "case_id": self.case_id}


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_JSON_BYTES:
        raise ValueError(f"The {what} is larger than {MAX_JSON_BYTES // 2**20} MB; a case's JSON is far smaller.")
    try:
        value = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ValueError(f"The {what} is not UTF-8 text; save it as UTF-8 JSON.") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"The {what} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from None
    except RecursionError:
        raise ValueError(f"The {what} is nested too deeply to be a case's JSON.") from None
    except ValueError:  # e.g. an integer longer than Python converts (4300 digits)
        raise ValueError(f"The {what} holds a number too long to read.") from None
    if not isinstance(value, dict):
        raise ValueError(f"The {what} must be a JSON object of name: value pairs, not a {type(value).__name__}.")
    return value


def _split_metadata(meta: dict[str, Any], inputs: CaseInputs, what: str) -> None:
    """metadata.json may carry the true label and the case id next to the table values."""
    meta = dict(meta)
    label = meta.pop("label", None)
    case_id = meta.pop("case_id", None)
    if label is not None:
        inputs.label = str(label)
    if case_id is not None and inputs.case_id is None:
        inputs.case_id = str(case_id)
    inputs.metadata = meta or None


def read_json_case(data: bytes, name: str = "case.json") -> CaseInputs:
    """A .json bundle: an object with ``note`` (text) and/or ``metadata`` (an object), optionally
    ``case_id`` and ``label``."""
    obj = _json_object(data, f"file '{name}'")
    inputs = CaseInputs(case_id=str(obj["case_id"]) if obj.get("case_id") is not None else Path(name).stem)
    note = obj.get("note")
    if note is not None and not isinstance(note, str):
        raise ValueError(f"'note' in '{name}' must be text, not {type(note).__name__}.")
    inputs.note = note
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise ValueError(f"'metadata' in '{name}' must be a JSON object of name: value pairs, not {type(meta).__name__}.")
    _split_metadata(meta or {}, inputs, name)
    if obj.get("label") is not None:
        inputs.label = str(obj["label"])
    other = sorted(set(obj) - {"note", "metadata", "case_id", "label"})
    if other:
        inputs.warnings.append(f"Ignored in '{name}': {', '.join(other[:10])} (a .json bundle holds note and metadata).")
    if inputs.note is None and inputs.metadata is None:
        raise ValueError(f"'{name}' has neither 'note' nor 'metadata'; a .json bundle needs at least one of them.")
    return inputs


def _safe_member_name(name: str) -> str:
    """The member's path inside the bundle; ValueError for anything that could land outside it."""
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\x00" in name:
        raise ValueError(f"The bundle holds a file with an unsafe name ('{name[:60]}'); refused.")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(f"The bundle holds a file whose name climbs out of the bundle ('{name[:60]}'); refused.")
    return posixpath.join(*parts) if parts else ""


def _is_archive(name: str, head: bytes = b"") -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES) or any(head.startswith(m) for m in ARCHIVE_MAGIC)


def read_zip_case(data: bytes, name: str = "case.zip") -> CaseInputs:
    """A .zip bundle with image.png / mask.png / note.txt / metadata.json / spectrum.csv at its top
    level (or inside one top-level folder). Other files are ignored with a warning."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError):
        raise ValueError(f"'{name}' is not a readable .zip file; zip the case files again and upload it.") from None
    if len(infos) > MAX_MEMBERS:
        raise ValueError(f"'{name}' holds {len(infos)} files; a case bundle holds at most {MAX_MEMBERS}.")
    members: list[tuple[zipfile.ZipInfo, str]] = []
    total = 0
    for info in infos:
        path = _safe_member_name(info.filename)
        if info.is_dir() or not path or path.startswith("__MACOSX/") or posixpath.basename(path).startswith("._"):
            continue
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ValueError(f"The bundle holds a link ('{path[:60]}'); links are refused, include the file itself.")
        if info.flag_bits & 0x1:
            raise ValueError(f"'{path[:60]}' in the bundle is encrypted; upload an unencrypted bundle.")
        if _is_archive(path):
            raise ValueError(f"The bundle holds another archive ('{path[:60]}'); nested archives are refused, "
                             "put the case files in one .zip.")
        if info.file_size > MAX_MEMBER_BYTES:
            raise ValueError(f"'{path[:60]}' in the bundle unpacks to {info.file_size / 2**20:.0f} MB; "
                             f"the limit per file is {MAX_MEMBER_BYTES // 2**20} MB.")
        if info.file_size > 2**20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise ValueError(f"'{path[:60]}' in the bundle is compressed more than {MAX_RATIO}:1 (a possible zip bomb); "
                             "refused.")
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise ValueError(f"The bundle unpacks to more than {MAX_TOTAL_BYTES // 2**20} MB; a case is far smaller.")
        members.append((info, path))
    # one top-level folder around the files is fine (zipping a folder makes one)
    tops = {p.split("/")[0] for _, p in members}
    strip = len(tops) == 1 and all("/" in p for _, p in members)
    inputs = CaseInputs(case_id=next(iter(tops)) if strip else Path(name).stem)
    ignored: list[str] = []
    found: dict[str, bytes] = {}
    for info, path in members:
        rel = path.split("/", 1)[1] if strip else path
        key = rel.lower()
        if key not in KNOWN:
            ignored.append(rel)
            continue
        try:
            with zf.open(info) as f:
                content = f.read(MAX_MEMBER_BYTES + 1)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError):
            raise ValueError(f"'{rel[:60]}' in the bundle could not be unpacked (damaged or an unsupported "
                             "compression); zip the case again.") from None
        if len(content) > MAX_MEMBER_BYTES:
            raise ValueError(f"'{rel[:60]}' in the bundle unpacks to more than {MAX_MEMBER_BYTES // 2**20} MB; refused.")
        if _is_archive(rel, content[:8]):
            raise ValueError(f"'{rel[:60]}' in the bundle is itself an archive; nested archives are refused.")
        kind = ("image" if key in IMAGE_NAMES else "mask" if key in MASK_NAMES else key)
        if kind in found:
            raise ValueError(f"The bundle holds more than one {kind.split('.')[0]} file; keep one.")
        found[kind] = content
    if not found:
        raise ValueError(f"'{name}' holds none of image.png, mask.png, note.txt, metadata.json, spectrum.csv; "
                         "name the case files like that.")
    inputs.image, inputs.mask = found.get("image"), found.get("mask")
    inputs.note, inputs.spectrum = found.get(NOTE_NAME), found.get(SPECTRUM_NAME)
    if METADATA_NAME in found:
        _split_metadata(_json_object(found[METADATA_NAME], "metadata.json in the bundle"), inputs, METADATA_NAME)
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
    raise ValueError(f"'{name}' is not a case bundle; upload a .zip of the case files or a .json with note and metadata.")


# ----------------------------------------------------------------------------------------------------------------------
# demo cases: <root>/<cohort>/<case_id>/ with image.png, mask.png, note.txt, metadata.json, spectrum.csv

@dataclass(frozen=True)
class DemoCase:
    cohort: str
    case_id: str
    path: Path

    @property
    def key(self) -> str:
        return f"{self.cohort}/{self.case_id}"


def list_demo_cases(roots: list[Path]) -> list[DemoCase]:
    out, seen = [], set()
    for root in roots:
        if not root.is_dir():
            continue
        for cohort in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
            for case in sorted(p for p in cohort.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
                d = DemoCase(cohort.name, case.name, case)
                if d.key not in seen and any((case / n).is_file() for n in KNOWN):
                    seen.add(d.key)
                    out.append(d)
    return out


def read_demo_case(demo: DemoCase) -> CaseInputs:
    inputs = CaseInputs(case_id=demo.case_id)
    files = {p.name.lower(): p for p in demo.path.iterdir() if p.is_file()}

    def read(names: tuple[str, ...]) -> bytes | None:
        for n in names:
            if n in files:
                if files[n].stat().st_size > MAX_MEMBER_BYTES:
                    raise ValueError(f"The demo file {n} is larger than {MAX_MEMBER_BYTES // 2**20} MB.")
                return files[n].read_bytes()
        return None

    inputs.image, inputs.mask = read(IMAGE_NAMES), read(MASK_NAMES)
    inputs.note, inputs.spectrum = read((NOTE_NAME,)), read((SPECTRUM_NAME,))
    meta = read((METADATA_NAME,))
    if meta is not None:
        _split_metadata(_json_object(meta, f"demo case {demo.key}'s metadata.json"), inputs, METADATA_NAME)
    inputs.case_id = demo.case_id
    return inputs


# ----------------------------------------------------------------------------------------------------------------------
# the metadata form

def validate_metadata_fields(schema: Any, raw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Each form field checked on its own against the model's schema, so one bad value does not
    drop the others. -> (valid values, {"metadata.<name>": sentence})."""
    valid: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, value in raw.items():
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        try:
            values, _ = schema.validate({name: value})
        except CaseError as e:
            mine = e.errors.get(f"metadata.{name}")
            if mine is not None:
                errors[f"metadata.{name}"] = mine
            else:  # only other (required, still empty) fields complained: this value is fine
                valid[name] = value
            continue
        if values.get(name) is not None:
            valid[name] = values[name]
    return valid, errors
