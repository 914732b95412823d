"""What the verbs share: the one-line ``UsageError``, the parser that raises it, and reading a case from flags."""
from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import FusionLensError


class UsageError(FusionLensError):
    """Bad flags or input: reported as one ``error:`` line, exit code 2."""


@contextlib.contextmanager
def usage_errors(*types: type[BaseException]) -> Iterator[None]:
    """Re-raise ``types`` (default ``ValueError``) from the block as a one-line ``UsageError`` (the original
    stays its ``__cause__``, shown by ``--debug``)."""
    caught = types or (ValueError,)
    try:
        yield
    except caught as e:
        raise UsageError(str(e)) from e


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print usage + exit 2; we want one line
        raise UsageError(message)


def _parse_meta(pairs: Sequence[str], meta_file: str | None) -> dict[str, Any] | None:
    meta: dict[str, Any] = {}
    if meta_file:
        try:
            data = json.loads(Path(meta_file).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"metadata file '{meta_file}' does not exist.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"metadata file '{meta_file}' is not valid JSON ({e}).") from None
        except RecursionError:
            raise UsageError(f"metadata file '{meta_file}' is nested too deeply to be metadata.") from None
        if not isinstance(data, dict):
            raise UsageError(f"metadata file '{meta_file}' must hold a JSON object of name: value pairs.")
        meta.update(data)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--meta expects key=value, got '{pair}'.")
        meta[key.strip()] = value.strip()
    return meta or None


def _read_note(args: argparse.Namespace) -> Any:
    if args.note is not None and args.note_file:
        raise UsageError("give either --note or --note-file, not both.")
    if args.note_file:
        p = Path(args.note_file)
        if not p.is_file():
            raise UsageError(f"note file '{p}' does not exist.")
        return p.read_bytes()
    return args.note


def case_from_args(args: argparse.Namespace):
    from ..case import Case

    if getattr(args, "case_dir", None):
        given = [f for f in ("image", "mask", "note", "note_file", "meta_file", "spectrum") if getattr(args, f, None)]
        if given or args.meta:
            raise UsageError(f"give either --case-dir or single inputs (--{(given or ['meta'])[0].replace('_', '-')}), not both.")
        return Case.from_folder(args.case_dir)
    return Case.from_inputs(image=args.image, mask=args.mask, note=_read_note(args),
                            metadata=_parse_meta(args.meta, args.meta_file), spectrum=args.spectrum,
                            case_id=args.case_id)


def add_case_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model package folder (config.json + model.safetensors)")
    p.add_argument("--image", help="dermoscopy image (PNG/JPEG/TIFF)")
    p.add_argument("--mask", help="lesion mask, same size as the image (white = lesion)")
    p.add_argument("--note", help="clinical note text")
    p.add_argument("--note-file", help="clinical note as a UTF-8 text file")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="one metadata value (repeatable)")
    p.add_argument("--meta-file", help="metadata as a JSON object")
    p.add_argument("--spectrum", help="spectrum CSV (wavelength,value rows, or one value per row)")
    p.add_argument("--case-id", help="a case reference (no patient names)")
    p.add_argument("--case-dir", help="a case folder (image.png, mask.png, note.txt, metadata.json, spectrum.csv) "
                                      "instead of the single inputs")


def explain_parts(args: argparse.Namespace, use: str) -> tuple[str, ...]:
    """``--parts`` if given (checked against the registry), else core's default list for ``use``."""
    from ..explain import PARTS, default_parts

    parts = tuple(args.parts) if args.parts else default_parts(use)
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise UsageError(f"unknown part '{bad[0]}'; choose from: {', '.join(PARTS)}.")
    return parts


def load_many(paths: Sequence[str]):
    from ..package import load_package

    if not 1 <= len(paths) <= 32:
        raise UsageError("--compare takes 1 to 32 model folders.")
    return [load_package(p) for p in paths]
