"""A case and the validation of every input channel: the one place bad input is caught.

Every problem becomes a :class:`CaseError` naming the field and saying, in one sentence, what is
wrong and what to do. Validation collects the errors of all fields, so a caller (the dashboard,
the CLI) can report each next to its field and keep the fields that were fine.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import unicodedata
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .case_io import BundleError, CaseInputs, read_case_path
from .errors import FusionLensError

MAX_IMAGE_BYTES = 25 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000          # ~6300 x 6300; a larger declared size is refused before decoding
MIN_IMAGE_SIDE = 16
MAX_NOTE_CHARS = 10_000
MAX_SPECTRUM_POINTS = 100_000
MIN_SPECTRUM_POINTS = 16
MAX_METADATA_KEYS = 200


class CaseError(FusionLensError, ValueError):
    """Bad input. ``errors`` maps a field ("image", "note", "metadata.age", ...) to one sentence."""

    def __init__(self, errors: Mapping[str, str] | str, field_name: str = "case"):
        self.errors = dict(errors) if isinstance(errors, Mapping) else {field_name: errors}
        super().__init__(" ".join(f"{k}: {v}" for k, v in self.errors.items()))


def _read_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (str, Path)):
        p = Path(value)
        if not p.is_file():
            raise ValueError(f"the file '{p}' does not exist; check the path.")
        return p.read_bytes()
    if hasattr(value, "read"):
        return value.read()
    raise ValueError(f"expected {what} as a file path or bytes, not {type(value).__name__}.")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


def load_image(value: Any, what: str = "image") -> Image.Image:
    """bytes / path / PIL / array -> an RGB PIL image, EXIF orientation applied, first frame only."""
    if isinstance(value, Image.Image):
        img = value
    elif isinstance(value, np.ndarray):
        arr = value
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise ValueError(f"the {what} array must be H x W or H x W x 3, not {arr.shape}.")
        if arr.dtype != np.uint8:
            if not np.isfinite(arr).all():
                raise ValueError(f"the {what} array contains NaN or infinite values.")
            arr = np.clip(arr * (255 if arr.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    else:
        data = _read_bytes(value, what)
        if not data:
            raise ValueError(f"the {what} file is empty; upload a PNG, JPEG or TIFF image.")
        if len(data) > MAX_IMAGE_BYTES:
            raise ValueError(f"the {what} file is {len(data) / 2**20:.0f} MB; the limit is {MAX_IMAGE_BYTES // 2**20} MB.")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
                w, h = img.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise ValueError(f"the {what} declares {w} x {h} pixels, more than the {MAX_IMAGE_PIXELS:,} pixels "
                                     "allowed; downscale it before uploading.")
                if img.format not in ("PNG", "JPEG", "TIFF", "BMP", "WEBP", "GIF", "MPO"):
                    raise ValueError(f"the {what} is a {img.format} file; upload a PNG, JPEG or TIFF image.")
                img.seek(0)
                img.load()
        except ValueError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError,
                Image.DecompressionBombWarning, EOFError) as e:
            if "ompression" in type(e).__name__:
                raise ValueError(f"the {what} declares more than the {MAX_IMAGE_PIXELS:,} pixels allowed (a possible "
                                 "decompression bomb); downscale it before uploading.") from None
            raise ValueError(f"the {what} file could not be read as an image (it may be truncated or not an image); "
                             "upload a PNG, JPEG or TIFF image.") from None
        img = ImageOps.exif_transpose(img)
    w, h = img.size
    if min(w, h) < MIN_IMAGE_SIDE:
        raise ValueError(f"the {what} is {w} x {h} pixels; it must be at least {MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE}.")
    if w * h > MAX_IMAGE_PIXELS:
        raise ValueError(f"the {what} has {w} x {h} pixels, more than the {MAX_IMAGE_PIXELS:,} allowed.")
    return _to_rgb(img)


def load_mask(value: Any, size: tuple[int, int] | None) -> np.ndarray:
    """A lesion mask -> boolean array [H, W]; must match the image size and be two-valued."""
    if size is None:
        raise ValueError("a lesion mask needs an image; upload the image too, or remove the mask.")
    arr = value if isinstance(value, np.ndarray) and value.dtype == bool else np.asarray(load_image(value, "mask").convert("L"))
    if arr.shape[::-1] != tuple(size):
        raise ValueError(f"the mask is {arr.shape[1]} x {arr.shape[0]} pixels but the image is {size[0]} x {size[1]}; "
                         "they must be the same size.")
    if arr.dtype != bool:
        values = np.unique(arr)
        if len(values) > 2 and np.mean((arr > 16) & (arr < 240)) > 0.01:
            raise ValueError("the mask is not binary; use black (background) and white (lesion) only.")
        arr = arr > 127
    if not arr.any():
        raise ValueError("the mask is empty (no lesion pixels); upload a mask with the lesion in white.")
    return arr


def clean_note(value: Any) -> str | None:
    """Text or UTF-8 bytes -> a note without control characters; empty -> None (note missing)."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("the note file is not valid UTF-8 text; save it as UTF-8 and upload it again.") from None
    if not isinstance(value, str):
        raise ValueError(f"the note must be text, not {type(value).__name__}.")
    text = "".join(ch for ch in value if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    text = text.strip()
    if len(text) > MAX_NOTE_CHARS:
        raise ValueError(f"the note has {len(text):,} characters; shorten it to at most {MAX_NOTE_CHARS:,}.")
    return text or None


def check_metadata(value: Any) -> dict[str, Any] | None:
    """Shape checks only; the model's schema checks names, types, ranges and categories."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"metadata must be a set of name = value pairs (a JSON object), not {type(value).__name__}.")
    if len(value) > MAX_METADATA_KEYS:
        raise ValueError(f"metadata has {len(value)} entries; at most {MAX_METADATA_KEYS} are accepted.")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise ValueError("metadata names must be text.")
        if v is not None and not isinstance(v, (str, int, float, bool)):
            shown = "".join(ch if ch.isprintable() else " " for ch in k)[:60]   # a name may hold a newline
            raise ValueError(f"metadata '{shown}' must be a number or text, not {type(v).__name__}.")
        out[k] = v
    return out or None


def parse_spectrum(value: Any) -> np.ndarray:
    """Array, CSV bytes/path -> float array [n] (values) or [n, 2] (wavelength, value)."""
    if isinstance(value, np.ndarray) or isinstance(value, (list, tuple)):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError("the spectrum must contain numbers only.") from None
    else:
        data = _read_bytes(value, "spectrum")
        if len(data) > 20 * 2**20:
            raise ValueError("the spectrum file is larger than 20 MB; a spectrum has at most "
                             f"{MAX_SPECTRUM_POINTS:,} points.")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ValueError("the spectrum file is not a text CSV; upload a CSV of wavelength,value rows.") from None
        rows = [r for r in text.replace(";", ",").splitlines() if r.strip()]
        if len(rows) > MAX_SPECTRUM_POINTS + 1:
            raise ValueError(f"the spectrum has {len(rows):,} rows; at most {MAX_SPECTRUM_POINTS:,} are accepted.")
        try:
            parsed = [[float(x) for x in r.split(",") if x.strip() != ""] for r in rows]
        except ValueError:
            try:  # one header line is fine
                parsed = [[float(x) for x in r.split(",") if x.strip() != ""] for r in rows[1:]]
            except ValueError:
                raise ValueError("the spectrum CSV has non-numeric values; it must be rows of wavelength,value "
                                 "(one optional header line).") from None
        widths = {len(r) for r in parsed}
        if len(widths) != 1:
            raise ValueError("the spectrum CSV rows have different numbers of columns; use wavelength,value rows.")
        arr = np.asarray(parsed, dtype=np.float64)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
    if arr.ndim == 2 and arr.shape[1] != 2 and arr.shape[0] == 2:
        arr = arr.T
    if arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[1] != 2):
        raise ValueError("the spectrum must be one column of values or two columns (wavelength, value).")
    n = arr.shape[0]
    if n < MIN_SPECTRUM_POINTS or n > MAX_SPECTRUM_POINTS:
        raise ValueError(f"the spectrum has {n:,} points; it needs between {MIN_SPECTRUM_POINTS} and {MAX_SPECTRUM_POINTS:,}.")
    if not np.isfinite(arr).all():
        raise ValueError("the spectrum contains NaN or infinite values; fill or remove those points.")
    if arr.ndim == 2 and len(np.unique(arr[:, 0])) != n:
        raise ValueError("the spectrum's wavelengths repeat; each wavelength must appear once.")
    return arr


@dataclass
class Case:
    """One patient case; every channel is optional. Build it with :meth:`from_inputs` to validate."""

    image: Image.Image | None = None
    mask: np.ndarray | None = None
    note: str | None = None
    metadata: dict[str, Any] | None = None
    spectrum: np.ndarray | None = None
    case_id: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    truth: dict[str, Any] = field(default_factory=dict)   # ground truth of demo data (label, evidence, kind)

    @classmethod
    def from_inputs(cls, image: Any = None, mask: Any = None, note: Any = None, metadata: Any = None,
                    spectrum: Any = None, case_id: str | None = None, partial: bool = False) -> "Case":
        """Validate every given channel. Raises one CaseError listing each bad field, unless
        ``partial``: then the bad fields are left out and their errors kept in ``extras['errors']``."""
        errors: dict[str, str] = {}
        out: dict[str, Any] = {}
        checks = [("image", image, load_image), ("note", note, clean_note),
                  ("metadata", metadata, check_metadata), ("spectrum", spectrum, parse_spectrum)]
        for name, value, fn in checks:
            if value is None:
                continue
            try:
                out[name] = fn(value)
            except ValueError as e:
                errors[name] = _sentence(e)
        if mask is not None:
            try:
                img = out.get("image")
                out["mask"] = load_mask(mask, img.size if img is not None else None)
            except ValueError as e:
                errors["mask"] = _sentence(e)
        if errors and not partial:
            raise CaseError(errors)
        case = cls(case_id=case_id, **out)
        if errors:
            case.extras["errors"] = errors
        return case

    @classmethod
    def from_case_inputs(cls, inputs: CaseInputs, partial: bool = False) -> "Case":
        """A case from what :mod:`core.case_io` read (a folder, a bundle, a demo case), validated like
        :meth:`from_inputs`; its ground truth goes to ``truth`` (and, for older callers, ``extras``)."""
        case = cls.from_inputs(**inputs.as_kwargs(), partial=partial)
        case.truth = dict(inputs.truth)
        case.extras.update({k: v for k, v in inputs.truth.items() if k not in case.extras})
        return case

    @classmethod
    def from_folder(cls, folder: str | Path, partial: bool = False) -> "Case":
        """A case folder as the demo cases ship it (or a .zip / .json bundle file), read by
        :func:`core.case_io.read_case_path`: ``image.png`` (or .jpg/.tif), ``mask.png`` (or .tif), ``note.txt``,
        ``metadata.json`` (its ``label``, ``evidence`` and ``kind`` go to ``truth``, ``case_id`` is taken out of
        the table), ``spectrum.csv``, an optional ``truth.json``; the case id is the folder name."""
        try:
            inputs = read_case_path(folder)
        except BundleError as e:
            raise CaseError({e.field: str(e)}) from None
        return cls.from_case_inputs(inputs, partial=partial)

    def fingerprint(self) -> str:
        """sha256 over every input channel (not the id, not the truth); kept in ``extras`` once computed."""
        fp = self.extras.get("fingerprint")
        if fp:
            return fp
        h = hashlib.sha256()
        if self.image is not None:
            h.update(b"image" + repr((self.image.size, self.image.mode)).encode() + self.image.tobytes())
        if self.mask is not None:
            h.update(b"mask" + repr(self.mask.shape).encode() + np.packbits(self.mask).tobytes())
        h.update(b"note" + (self.note or "").encode())
        h.update(b"meta" + json.dumps(self.metadata or {}, sort_keys=True, default=str).encode())
        if self.spectrum is not None:
            h.update(b"spectrum" + repr(self.spectrum.shape).encode() + np.ascontiguousarray(self.spectrum).tobytes())
        fp = self.extras["fingerprint"] = h.hexdigest()
        return fp

    def restrict_to(self, package: Any) -> tuple["Case", dict[str, str]]:
        """This case without the metadata values and the spectrum ``package`` can't use, and the sentence
        for each input left out (``{"metadata.age": ..., "spectrum": ...}``). ``package``: anything with
        ``prepare([case], skip=...)`` raising CaseError (a :class:`core.package.Package`). The case itself is
        unchanged. Every modality is skipped: the checks (schema, spectrum grid) run, no pixels or tokens are made."""
        case, errors = self, {}
        for _ in range(4):
            try:
                package.prepare([case], skip=set(package.modalities))
                break
            except CaseError as e:
                meta, spectrum = dict(case.metadata or {}), case.spectrum
                for name, msg in e.errors.items():
                    if name == "spectrum" and spectrum is not None:
                        spectrum, errors[name] = None, msg
                    elif name.startswith("metadata.") and name.split(".", 1)[1] in meta:
                        meta.pop(name.split(".", 1)[1])
                        errors[name] = msg
                if spectrum is case.spectrum and meta == (case.metadata or {}):
                    break
                case = replace(case, metadata=meta or None, spectrum=spectrum,
                               extras={k: v for k, v in case.extras.items() if k != "fingerprint"})
        return case, errors

    def present(self) -> dict[str, bool]:
        return {"image": self.image is not None, "note": bool(self.note), "metadata": bool(self.metadata),
                "spectrum": self.spectrum is not None}


def _sentence(e: Exception) -> str:
    s = str(e).strip()
    return (s[0].upper() + s[1:]) if s else "This input could not be read."


def finite_number(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number, not true/false")
    x = float(v)
    if not math.isfinite(x):
        raise ValueError("expected a finite number")
    return x
