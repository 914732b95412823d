"""The hand-made corpus of hostile and broken inputs, one entry per thing that goes wrong on a bad day.

Each entry: (channel, name, value, verdict, needle). ``verdict`` is "reject" (the field must be refused
with a sentence containing ``needle``) or "accept" (odd but valid: it must be read, not refused).
Values are built in code (no binary blobs in the repository) and are small, except where size is the
point (1 MB note, a million-row spectrum), which are built on demand.
"""
from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image

W, H = 48, 40


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _rgb(seed: int = 0, w: int = W, h: int = H) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares a huge size (a decompression bomb): it must be refused
    before any pixel is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _exif_rotated() -> bytes:
    img = _rgb(3)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def _animated_gif() -> bytes:
    frames = [_rgb(i).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _multipage_tiff() -> bytes:
    frames = [_rgb(i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _mode(mode: str) -> bytes:
    img = _rgb(5)
    if mode == "I;16":
        arr = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        return _png(Image.fromarray(arr))  # uint16 -> a 16-bit greyscale PNG
    if mode == "CMYK":
        buf = io.BytesIO()
        img.convert("CMYK").save(buf, "JPEG")
        return buf.getvalue()
    if mode == "RGBA":
        rgba = img.convert("RGBA")
        rgba.putalpha(Image.new("L", img.size, 0))  # fully transparent
        return _png(rgba)
    return _png(img.convert(mode))


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _spectrum_csv(n: int = 80, lo: float = 1000.0, hi: float = 1100.0, value=None) -> bytes:
    x = np.linspace(lo, hi, n)
    y = np.random.default_rng(0).normal(size=n) if value is None else np.full(n, value)
    return "\n".join(f"{a},{b}" for a, b in zip(x, y)).encode()


def images():
    png = _png(_rgb())
    return [
        ("image", "empty file", b"", "reject", "empty"),
        ("image", "truncated PNG", png[: len(png) // 2], "reject", "could not be read"),
        ("image", "wrong magic bytes", b"GIF89a" + png[6:], "reject", "could not be read"),
        ("image", "text named .png", b"hello, I am not an image", "reject", "could not be read"),
        ("image", "decompression bomb (100000 x 100000 declared)", _bomb_png(), "reject", "pixels"),
        ("image", "1 x 1 pixel", _png(_rgb(1, 1, 1)), "reject", "at least"),
        ("image", "16-bit greyscale", _mode("I;16"), "accept", None),
        ("image", "CMYK JPEG", _mode("CMYK"), "accept", None),
        ("image", "palette PNG", _mode("P"), "accept", None),
        ("image", "alpha (fully transparent)", _mode("RGBA"), "accept", None),
        ("image", "EXIF-rotated JPEG", _exif_rotated(), "accept", None),
        ("image", "animated GIF (first frame used)", _animated_gif(), "accept", None),
        ("image", "multi-page TIFF (first page used)", _multipage_tiff(), "accept", None),
        ("image", "PDF bytes", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "reject", "could not be read"),
    ]


def masks():
    return [
        ("mask", "wrong size", _png(Image.new("L", (W + 5, H), 255)), "reject", "same size"),
        ("mask", "not binary (grey ramp)", _png(Image.fromarray(np.tile(np.linspace(0, 255, W, dtype=np.uint8), (H, 1)))),
         "reject", "not binary"),
        ("mask", "empty (all black)", _png(Image.new("L", (W, H), 0)), "reject", "empty"),
        ("mask", "not an image", b"\x00\x01garbage", "reject", "could not be read"),
    ]


def notes():
    return [
        ("note", "empty", b"", "accept", None),                       # an empty note is a missing note
        ("note", "1 MB of text", ("itchy " * 180_000).encode(), "reject", "characters"),
        ("note", "invalid UTF-8", b"itchy \xff\xfe lesion \xc3", "reject", "UTF-8"),
        ("note", "control characters", "itchy\x00\x07\x1b[31m lesion\x7f".encode(), "accept", None),
        ("note", "HTML / JS", b"<script>alert(1)</script><img src=x onerror=alert(2)>", "accept", None),
        ("note", "right-to-left text", "\u202eevil\u202c \u05d2\u05e8\u05d3 \u0627\u0644\u062d\u0643\u0629".encode(), "accept", None),
        ("note", "emoji", "itchy 😖🔥 since 🗓️ 3 weeks".encode(), "accept", None),
        ("note", "CJK", "皮疹瘙痒三周，边界不规则。".encode(), "accept", None),
        ("note", "only whitespace", b" \n\t \r\n", "accept", None),
    ]


def metadata():
    return [
        ("metadata", "missing keys (empty object)", {}, "accept", None),
        ("metadata", "wrong type: list", [1, 2, 3], "reject", "JSON object"),
        ("metadata", "wrong type: nested object", {"age": {"value": 3}}, "reject", "number or text"),
        ("metadata", "NaN age", {"age": float("nan")}, "reject", "age"),
        ("metadata", "infinite age", {"age": float("inf")}, "reject", "age"),
        ("metadata", "out-of-range age", {"age": 300}, "reject", "0 to 120"),
        ("metadata", "text where a number belongs", {"age": "old"}, "reject", "age"),
        ("metadata", "unknown category", {"sex": "dragon"}, "reject", "sex"),
        ("metadata", "unknown field only", {"shoe_size": 44}, "accept", None),
        ("metadata", "boolean age", {"age": True}, "reject", "age"),
        ("metadata", "too many keys", {f"k{i}": i for i in range(500)}, "reject", "at most"),
    ]


def spectra():
    return [
        ("spectrum", "wrong length (3 points)", _spectrum_csv(3), "reject", "points"),
        ("spectrum", "non-numeric", b"wavelength,value\n1000,a\n1001,b\n", "reject", "non-numeric"),
        ("spectrum", "NaN values", _spectrum_csv(value=float("nan")), "reject", "NaN"),
        ("spectrum", "one column of the wrong length", "\n".join(str(v) for v in np.random.default_rng(1).normal(size=80)).encode(),
         "reject", "(wavelength, value) pairs"),
        ("spectrum", "one column", "\n".join(str(v) for v in np.random.default_rng(1).normal(size=64)).encode(), "accept", None),
        ("spectrum", "ragged rows", b"1000,1\n1001\n1002,3,4\n" * 10, "reject", "different numbers of columns"),
        ("spectrum", "binary bytes", bytes(range(256)) * 4, "reject", "not a text CSV"),
        ("spectrum", "repeated wavelengths", b"\n".join([b"1000,1"] * 50), "reject", "repeat"),
        ("spectrum", "outside the model's range", _spectrum_csv(80, 5000, 6000), "reject", "model's range"),
        ("spectrum", "half the model's range", _spectrum_csv(80, 1050, 1100), "reject", "model's range"),
    ]


def million_row_spectrum() -> bytes:
    return b"1,2\n" * 1_000_000


def bundles():
    return [
        ("bundle", "zip bomb", _zip({"note.txt": b"\0" * (3 * 2**20)}), "reject", "zip bomb"),
        ("bundle", "path traversal ../", _zip({"../evil.txt": b"x"}), "reject", "climbs out"),
        ("bundle", "absolute path", _zip({"/etc/note.txt": b"x"}), "reject", "unsafe name"),
        ("bundle", "nested archive", _zip({"inner.zip": _zip({"note.txt": b"x"})}), "reject", "nested archives"),
        ("bundle", "JSON that is not an object", b"[1, 2, 3]", "reject", "JSON object"),
        ("bundle", "JSON string", b'"hello"', "reject", "JSON object"),
        ("bundle", "broken JSON", b"{note: 1", "reject", "not valid JSON"),
        ("bundle", "broken zip", b"PK\x03\x04 this is not a zip", "reject", "not a readable"),
    ]


def corpus():
    return images() + masks() + notes() + metadata() + spectra() + bundles()


def as_json(value) -> str:
    return json.dumps(value)
