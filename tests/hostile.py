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


# ---- the grown corpus (issue 19): generated in code, each with the verdict it must get -------------------------------

def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_with_chunk(kind: bytes, data: bytes) -> bytes:
    png = _png(_rgb(7))
    return png[:33] + _chunk(kind, data) + png[33:]       # after IHDR (8 signature + 25 IHDR bytes)


def _huge_icc_png(size: int) -> bytes:
    """An iCCP chunk with a garbage profile of ``size`` bytes (compressed to a few KB)."""
    return _png_with_chunk(b"iCCP", b"evil\0\0" + zlib.compress(b"\0" * size, 9))


def _huge_exif_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x9286] = "A" * 60_000                          # UserComment: nearly the whole 64 KB APP1 segment
    exif[0x010E] = "=HYPERLINK(\"http://evil.example\")"  # ImageDescription: a formula
    return _save(_rgb(8), "JPEG", exif=exif)


def _tiff_pages(n: int) -> bytes:
    first = _rgb(9)
    rest = [Image.new("L", (16, 16), i % 256) for i in range(n - 1)]
    return _save(first, "TIFF", save_all=True, append_images=rest)


def _claimed_bmp(w: int, h: int) -> bytes:
    header = b"BM" + struct.pack("<IHHI", 54 + 16, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, w * h * 3 & 0xFFFFFFFF, 2835, 2835, 0, 0)
    return header + info + b"\0" * 16


def _claimed_gif(w: int, h: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", w, h) + b"\x00\x00\x00" + b",\0\0\0\0" + struct.pack("<HH", w, h) + b"\0\x02\x02D\x01\0;"


def _claimed_tiff(w: int, h: int) -> bytes:
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, 8),
               (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, 0x7FFFFFFF)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def _claimed_jpeg(w: int, h: int) -> bytes:
    jpg = _save(_rgb(10), "JPEG")
    i = jpg.index(b"\xff\xc0")
    return jpg[: i + 5] + struct.pack(">HH", h, w) + jpg[i + 9:]


def _claimed_webp(w: int, h: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\0\0\0" + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def _heic() -> bytes:
    ftyp = b"ftypheic" + b"\0\0\0\0" + b"mif1heic"
    return struct.pack(">I", 8 + len(ftyp) - 4 + 4) + ftyp + b"\0" * 64


def _polyglot_png_zip() -> bytes:
    """A valid PNG with a valid zip (holding a note) appended: both readers accept it."""
    return _png(_rgb(11)) + _zip({"note.txt": b"Polyglot note."})


SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><script>alert(1)</script>'
       b'<rect width="64" height="64"/></svg>')


def images_more():
    png = _png(_rgb(12))
    jpg = _save(_rgb(12), "JPEG")
    out = [
        ("image", "polyglot PNG + ZIP", _polyglot_png_zip(), "accept", None),
        ("image", "huge ICC profile (1,000,000 bytes)", _huge_icc_png(1_000_000), "accept", None),
        ("image", "ICC profile over Pillow's limit (4 MB)", _huge_icc_png(4 * 2**20), "reject", "too large"),
        ("image", "huge EXIF (60 KB comment, formula description)", _huge_exif_jpeg(), "accept", None),
        ("image", "TIFF with 2000 pages (first page used)", _tiff_pages(2000), "accept", None),
        ("image", "SVG with a script", SVG, "reject", "could not be read"),
        ("image", "HEIC (ftyp heic box)", _heic(), "reject", "could not be read"),
        ("image", "WebP (lossy)", _save(_rgb(13), "WEBP", quality=60), "accept", None),
        ("image", "WebP (lossless)", _save(_rgb(13), "WEBP", lossless=True), "accept", None),
        ("image", "animated WebP", _save(_rgb(14), "WEBP", save_all=True, append_images=[_rgb(15)]), "accept", None),
        ("image", "PNG claiming 46341 x 46341 (2 GB)", _bomb_png(46341, 46341), "reject", "pixels"),
        ("image", "PNG claiming 65535 x 32768", _bomb_png(65535, 32768), "reject", "pixels"),
        ("image", "BMP claiming 2 GB", _claimed_bmp(30000, 24000), "reject", "pixels"),
        ("image", "GIF claiming 65535 x 65535", _claimed_gif(65535, 65535), "reject", "pixels"),
        ("image", "TIFF claiming 50000 x 50000 and a 2 GB strip", _claimed_tiff(50000, 50000), "reject", "pixels"),
        ("image", "JPEG claiming 65500 x 65500", _claimed_jpeg(65500, 65500), "reject", "pixels"),
        ("image", "WebP claiming 16384 x 16384", _claimed_webp(16384, 16384), "reject", "pixels"),
        ("image", "only the PNG signature", png[:8], "reject", "could not be read"),
        ("image", "PNG without IEND", png[:-12], "accept", None),
        ("image", "PNG with a bad IHDR CRC", png[:29] + b"\0\0\0\0" + png[33:], "reject", "could not be read"),
        ("image", "JPEG without EOI", jpg[:-2], "reject", "could not be read"),
        ("image", "JPEG header only", jpg[:200], "reject", "could not be read"),
        ("image", "BMP", _save(_rgb(16), "BMP"), "accept", None),
        ("image", "GIF (single frame)", _save(_rgb(16).convert("P"), "GIF"), "accept", None),
        ("image", "TIFF, LZW compressed", _save(_rgb(17), "TIFF", compression="tiff_lzw"), "accept", None),
        ("image", "TIFF, JPEG compressed", _save(_rgb(17), "TIFF", compression="jpeg"), "accept", None),
        ("image", "TIFF, 32-bit float", _save(Image.fromarray(np.random.default_rng(1).random((H, W), dtype=np.float32)), "TIFF"),
         "accept", None),
        ("image", "TIFF, constant float", _save(Image.fromarray(np.full((H, W), 3.5, dtype=np.float32)), "TIFF"), "accept", None),
        ("image", "progressive JPEG", _save(_rgb(18), "JPEG", progressive=True), "accept", None),
        ("image", "interlaced PNG", _save(_rgb(18), "PNG", optimize=False) , "accept", None),
        ("image", "1-bit PNG", _png(_rgb(19).convert("1")), "accept", None),
        ("image", "grey + alpha PNG", _png(_rgb(19).convert("LA")), "accept", None),
        ("image", "greyscale JPEG", _save(_rgb(19).convert("L"), "JPEG"), "accept", None),
        ("image", "16 x 16 (smallest allowed)", _png(_rgb(20, 16, 16)), "accept", None),
        ("image", "15 x 15 (too small)", _png(_rgb(20, 15, 15)), "reject", "at least"),
        ("image", "4000 x 16 strip", _png(Image.new("RGB", (4000, 16), (200, 100, 50))), "accept", None),
        ("image", "16 x 4000 strip", _png(Image.new("RGB", (16, 4000), (200, 100, 50))), "accept", None),
        ("image", "3 x 3000 (too thin)", _png(Image.new("RGB", (3, 3000))), "reject", "at least"),
        ("image", "all black", _png(Image.new("RGB", (W, H))), "accept", None),
        ("image", "all white", _png(Image.new("RGB", (W, H), (255, 255, 255))), "accept", None),
        ("image", "EXIF orientation 8 (rotate 270)", _save(_rgb(21), "JPEG", exif=_orientation(8)), "accept", None),
        ("image", "EXIF orientation out of range (99)", _save(_rgb(21), "JPEG", exif=_orientation(99)), "accept", None),
        ("image", "ICO file", _save(_rgb(22, 32, 32), "ICO"), "reject", "ICO file"),
        ("image", "PSD-like header", b"8BPS\x00\x01" + b"\0" * 200, "reject", "could not be read"),
        ("image", "ZIP named .png", _zip({"image.png": png}), "reject", "could not be read"),
        ("image", "HTML named .png", b"<html><body><img src=x onerror=alert(1)></body></html>", "reject", "could not be read"),
        ("image", "NUL bytes only", b"\0" * 4096, "reject", "could not be read"),
        ("image", "random bytes", np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "reject", "could not be read"),
    ]
    for frac in (0.1, 0.25, 0.4, 0.6, 0.75, 0.9):
        out.append(("image", f"PNG truncated at {frac:.0%}", png[: int(len(png) * frac)], "reject", "could not be read"))
    for frac in (0.3, 0.7):
        out.append(("image", f"JPEG truncated at {frac:.0%}", jpg[: int(len(jpg) * frac)], "reject", "could not be read"))
    return out


def _orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def masks_more():
    def m(arr) -> bytes:
        return _png(Image.fromarray(arr))
    lesion = np.zeros((H, W), np.uint8)
    lesion[10:30, 12:36] = 255
    return [
        ("mask", "one lesion pixel", m(np.pad(np.full((1, 1), 255, np.uint8), ((5, H - 6), (5, W - 6)))), "accept", None),
        ("mask", "all white", m(np.full((H, W), 255, np.uint8)), "accept", None),
        ("mask", "0/1 values (not 0/255)", m((lesion > 0).astype(np.uint8)), "reject", "empty"),
        ("mask", "RGB mask", _png(Image.fromarray(lesion).convert("RGB")), "accept", None),
        ("mask", "mask with alpha", _png(Image.fromarray(lesion).convert("RGBA")), "accept", None),
        ("mask", "16-bit mask", _png(Image.fromarray(lesion.astype(np.uint16) * 257)), "accept", None),
        ("mask", "JPEG mask (compression noise)", _save(Image.fromarray(lesion), "JPEG", quality=90), "accept", None),
        ("mask", "transposed size", m(np.zeros((W, H), np.uint8) + 255), "reject", "same size"),
        ("mask", "one pixel too small", m(np.full((H - 1, W), 255, np.uint8)), "reject", "same size"),
        ("mask", "empty file", b"", "reject", "empty"),
        ("mask", "decompression bomb", _bomb_png(), "reject", "pixels"),
        ("mask", "noise (not binary)", m(np.random.default_rng(3).integers(0, 256, (H, W), dtype=np.uint8)), "reject", "not binary"),
        ("mask", "SVG", SVG, "reject", "could not be read"),
    ]


FORMULAS = ["=1+1", "=cmd|' /C calc'!A0", "+SUM(1,2)", "-2+3", "@SUM(A1)", "\t=1+1", "=HYPERLINK(\"http://evil.example\",\"x\")"]


def notes_more():
    out = [
        ("note", "exactly 10,000 characters", ("a" * 10_000).encode(), "accept", None),
        ("note", "10,001 characters", ("a" * 10_001).encode(), "reject", "characters"),
        ("note", "UTF-8 BOM", "\ufeffItchy lesion.".encode(), "accept", None),
        ("note", "UTF-16 with BOM", "Itchy lesion.".encode("utf-16"), "reject", "UTF-8"),
        ("note", "Latin-1 bytes", "Läsion am Rücken".encode("latin-1"), "reject", "UTF-8"),
        ("note", "NUL bytes inside", b"itchy\x00\x00\x00 lesion", "accept", None),
        ("note", "only NUL bytes", b"\x00" * 100, "accept", None),
        ("note", "zero-width characters", "it\u200bchy\u200d le\u2060sion".encode(), "accept", None),
        ("note", "combining-character flood", ("e" + "\u0301" * 500).encode(), "accept", None),
        ("note", "one 5,000-letter word", ("x" * 5000).encode(), "accept", None),
        ("note", "ANSI escape codes", b"\x1b[2J\x1b[31mred\x1b[0m lesion", "accept", None),
        ("note", "CRLF only", b"\r\n" * 50, "accept", None),
        ("note", "markdown link to javascript", b"[click](javascript:alert(1)) ![x](http://evil.example/x.png)", "accept", None),
        ("note", "Streamlit markdown directives", b":red[big] :material/warning: $x^2$ <div>", "accept", None),
        ("note", "SQL-looking text", b"'; DROP TABLE cases; --", "accept", None),
        ("note", "path-looking text", b"../../etc/passwd C:\\Windows\\system32", "accept", None),
        ("note", "template braces", b"{{7*7}} ${7*7} %(x)s {0}", "accept", None),
        ("note", "surrogate-escape bytes", b"lesion \xed\xa0\x80 here", "reject", "UTF-8"),
        ("note", "mixed scripts (Greek, Cyrillic, Thai)", "Εξάνθημα сыпь ผื่น".encode(), "accept", None),
        ("note", "emoji ZWJ sequences", "👨‍⚕️👩🏽‍🔬 🏳️‍🌈".encode(), "accept", None),
        ("note", "Chinese note", "患者背部皮损，瘙痒三个月，边界不清。".encode(), "accept", None),
        ("note", "Japanese and Korean", "かゆみ 가려움".encode(), "accept", None),
        ("note", "bidi override attack", "safe\u202etxt.exe\u202c".encode(), "accept", None),
        ("note", "tabs only", b"\t\t\t", "accept", None),
    ]
    out += [("note", f"formula injection {f!r}", f.encode(), "accept", None) for f in FORMULAS]
    return out


def metadata_more():
    out = [
        ("metadata", "age as numeric text", {"age": "50"}, "accept", None),
        ("metadata", "age with unit text", {"age": "50 years"}, "reject", "age"),
        ("metadata", "negative age", {"age": -1}, "reject", "0 to 120"),
        ("metadata", "age 120 (upper bound)", {"age": 120}, "accept", None),
        ("metadata", "age 120.5", {"age": 120.5}, "reject", "0 to 120"),
        ("metadata", "age 1e308", {"age": 1e308}, "reject", "0 to 120"),
        ("metadata", "age -0.0", {"age": -0.0}, "accept", None),
        ("metadata", "full-width digits", {"age": "５０"}, "accept", None),
        ("metadata", "null values", {"age": None, "sex": None, "site": None}, "accept", None),
        ("metadata", "category in upper case", {"sex": "FEMALE"}, "accept", None),
        ("metadata", "category with spaces", {"site": "  back "}, "accept", None),
        ("metadata", "empty category", {"sex": ""}, "accept", None),
        ("metadata", "list value", {"age": [50]}, "reject", "number or text"),
        ("metadata", "key with NUL byte", {"a\x00ge": 50}, "accept", None),
        ("metadata", "key that looks like a path", {"../../etc/passwd": "x"}, "accept", None),
        ("metadata", "very long key", {"k" * 10_000: 1}, "accept", None),
        ("metadata", "very long value", {"site": "b" * 100_000}, "reject", "site"),
        ("metadata", "HTML in a value", {"site": "<script>alert(1)</script>"}, "reject", "site"),
        ("metadata", "200 keys (limit)", {f"k{i}": i for i in range(200)}, "accept", None),
        ("metadata", "201 keys", {f"k{i}": i for i in range(201)}, "reject", "at most"),
        ("metadata", "patient name field", {"patient_name": "Jane Doe", "age": 40}, "accept", None),
        ("metadata", "top-level string", "age=50", "reject", "JSON object"),
        ("metadata", "top-level number", 50, "reject", "JSON object"),
        ("metadata", "non-text key", {1: 2}, "reject", "names must be text"),
        ("metadata", "boolean sex", {"sex": False}, "reject", "sex"),
    ]
    out += [("metadata", f"formula in a known category {f!r}", {"sex": f}, "reject", "sex") for f in FORMULAS[:3]]
    out += [("metadata", f"formula in an extra field {f!r}", {"referrer": f, "age": 50}, "accept", None) for f in FORMULAS]
    return out


def spectra_more():
    x = np.linspace(1000, 1100, 80)
    y = np.sin(x / 7)

    def csv(rows, sep=",", nl="\n") -> bytes:
        return nl.join(sep.join(str(v) for v in r) for r in rows).encode()

    rows = list(zip(x, y))
    return [
        ("spectrum", "semicolon separated", csv(rows, ";"), "accept", None),
        ("spectrum", "CRLF line ends", csv(rows, nl="\r\n"), "accept", None),
        ("spectrum", "UTF-8 BOM and header", "\ufeffwavenumber,absorbance\n".encode() + csv(rows), "accept", None),
        ("spectrum", "two header lines", b"a,b\nc,d\n" + csv(rows), "reject", "non-numeric"),
        ("spectrum", "descending wavelengths", csv(rows[::-1]), "accept", None),
        ("spectrum", "shuffled wavelengths", csv([rows[i] for i in np.random.default_rng(0).permutation(80)]), "accept", None),
        ("spectrum", "scientific notation", "\n".join(f"{a:.6e},{b:.6e}" for a, b in rows).encode(), "accept", None),
        ("spectrum", "trailing commas", csv(rows).replace(b"\n", b",\n") + b",", "accept", None),
        ("spectrum", "infinite value", csv(rows[:-1] + [(1100.0, float("inf"))]), "reject", "infinite"),
        ("spectrum", "1e999 overflow", csv(rows[:-1]) + b"\n1100,1e999", "reject", "infinite"),
        ("spectrum", "empty file", b"", "reject", "columns"),
        ("spectrum", "whitespace only", b"  \n \n\t", "reject", "columns"),
        ("spectrum", "header only", b"wavenumber,absorbance\n", "reject", "columns"),
        ("spectrum", "three columns", csv([(a, b, b) for a, b in rows]), "reject", "two columns"),
        ("spectrum", "tab separated", csv(rows, "\t"), "reject", "non-numeric"),
        ("spectrum", "decimal commas", "\n".join(f"{a:.1f};{b:.3f}".replace(".", ",") for a, b in rows).encode(), "reject", "two columns"),
        ("spectrum", "UTF-16", csv(rows).decode().encode("utf-16"), "reject", "not a text CSV"),
        ("spectrum", "NUL bytes", csv(rows).replace(b"\n", b"\x00\n", 3), "reject", "non-numeric"),
        ("spectrum", "formula in the header", b"=cmd|' /C calc'!A0,=1+1\n" + csv(rows), "accept", None),
        ("spectrum", "formula as a value", csv(rows[:-1]) + b"\n1100,=1+1", "reject", "non-numeric"),
        ("spectrum", "hex numbers", "\n".join(f"{int(a)},{hex(i)}" for i, (a, _) in enumerate(rows)).encode(), "reject", "non-numeric"),
        ("spectrum", "100,001 one-column rows", b"1\n" * 100_002, "reject", "at most"),
        ("spectrum", "exactly the model's range, 64 points", csv(list(zip(np.linspace(1000, 1100, 64), np.zeros(64)))), "accept", None),
        ("spectrum", "constant zero", csv([(a, 0.0) for a in x]), "accept", None),
        ("spectrum", "huge values", csv([(a, 1e300) for a in x]), "accept", None),
        ("spectrum", "negative wavelengths", csv([(-a, b) for a, b in rows]), "reject", "model's range"),
        ("spectrum", "20 MB of text", b"1" * (20 * 2**20 + 1), "reject", "20 MB"),
    ]


def _zip_raw(members: list[tuple[str, bytes]], **info_kw) -> bytes:
    import warnings

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for name, data in members:
            zi = zipfile.ZipInfo(name)
            for k, v in info_kw.items():
                setattr(zi, k, v)
            z.writestr(zi, data, zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def _zip_claiming(size: int) -> bytes:
    """A zip whose central directory declares a member of ``size`` bytes (e.g. 2 GB) that is not there."""
    data = _zip({"note.txt": b"x"})
    cd = data.rindex(b"PK\x01\x02")
    return data[: cd + 24] + struct.pack("<I", size) + data[cd + 28:]


def _encrypted_flag(data: bytes) -> bytes:
    """Set the 'encrypted' bit in the local header and the central directory (zipfile never writes it)."""
    b = bytearray(data)
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = bytes(b).index(sig)
        b[i + off] |= 0x1
    return bytes(b)


def bundle_filename(name: str, value: bytes) -> str:
    """The upload name a bundle entry arrives with: .json for the JSON ones, .zip for the rest."""
    if name.startswith("JSON") or name == "empty .json file" or value[:1] in (b"[", b"{", b'"'):
        return "case.json"
    return "case.zip"


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


def bundles_more():
    png, note = _png(_rgb(23)), b"Itchy lesion on the back."
    return [
        ("bundle", "polyglot PNG + ZIP as a bundle", _polyglot_png_zip(), "accept", None),
        ("bundle", "member claiming 2 GB", _zip_claiming(2**31 - 1), "reject", "MB"),
        ("bundle", "member claiming 30 MB", _zip_claiming(30 * 2**20), "reject", "MB"),
        ("bundle", "NUL byte in a member name", _zip_raw([("note\x00.txt", note)]), "reject", "holds none"),
        ("bundle", "backslash path", _zip_raw([("..\\..\\note.txt", note)]), "reject", "unsafe name"),
        ("bundle", "drive-letter path", _zip_raw([("C:/note.txt", note)]), "reject", "unsafe name"),
        ("bundle", "deep ../ path", _zip_raw([("a/b/../../../note.txt", note)]), "reject", "climbs out"),
        ("bundle", "symlink member", _zip_raw([("note.txt", b"/etc/passwd")], external_attr=(0o120777 << 16)), "reject", "link"),
        ("bundle", "encrypted flag", _encrypted_flag(_zip({"note.txt": note})), "reject", "encrypted"),
        ("bundle", "33 members", _zip({f"f{i}.txt": b"x" for i in range(33)}), "reject", "at most"),
        ("bundle", "two images", _zip({"image.png": png, "image.jpg": png}), "reject", "more than one"),
        ("bundle", "only unknown files", _zip({"readme.md": b"hi"}), "reject", "holds none"),
        ("bundle", "empty zip", _zip({}), "reject", "holds none"),
        ("bundle", "directory entries only", _zip_raw([("case/", b"")]), "reject", "holds none"),
        ("bundle", "zip disguised as image.png", _zip({"image.png": _zip({"x.txt": b"x"})}), "reject", "archive"),
        ("bundle", "gzip disguised as note.txt", _zip({"note.txt": zlib.compress(b"x") and b"\x1f\x8b\x08" + b"\0" * 20}),
         "reject", "archive"),
        ("bundle", "__MACOSX junk beside the case", _zip({"note.txt": note, "__MACOSX/._note.txt": b"junk"}), "accept", None),
        ("bundle", "one top folder", _zip({"case-7/note.txt": note, "case-7/image.png": png}), "accept", None),
        ("bundle", "two levels of folders", _zip({"a/b/note.txt": note}), "reject", "holds none"),
        ("bundle", "upper-case names", _zip({"NOTE.TXT": note, "IMAGE.PNG": png}), "accept", None),
        ("bundle", "metadata.json not JSON", _zip({"metadata.json": b"{age: 5"}), "reject", "not valid JSON"),
        ("bundle", "metadata.json a list", _zip({"metadata.json": b"[1]"}), "reject", "JSON object"),
        ("bundle", "metadata.json in UTF-16", _zip({"metadata.json": '{"age": 5}'.encode("utf-16")}), "reject", "UTF-8"),
        ("bundle", "path-like case id in metadata.json", _zip({"metadata.json": _json({"case_id": "../../etc/passwd", "age": 50})}),
         "accept", None),
        ("bundle", "formula in metadata.json", _zip({"metadata.json": _json({"referrer": "=cmd|' /C calc'!A0", "age": 50})}),
         "accept", None),
        ("bundle", "JSON with a BOM", "\ufeff".encode() + _json({"note": "Itchy."}), "accept", None),
        ("bundle", "JSON in UTF-16", json.dumps({"note": "Itchy."}).encode("utf-16"), "reject", "UTF-8"),
        ("bundle", "JSON note not text", _json({"note": 5}), "reject", "must be text"),
        ("bundle", "JSON metadata not an object", _json({"metadata": [1, 2]}), "reject", "JSON object"),
        ("bundle", "JSON with neither note nor metadata", _json({"label": "mel"}), "reject", "neither"),
        ("bundle", "JSON over 2 MB", _json({"note": "x" * (2 * 2**20)}), "reject", "larger than"),
        ("bundle", "JSON with NUL in the case id", _json({"note": "Itchy.", "case_id": "a\x00b/../c"}), "accept", None),
        ("bundle", "JSON nested 10,000 deep", b"[" * 10_000 + b"]" * 10_000, "reject", "nested too deeply"),
        ("bundle", "JSON with a huge number", b'{"metadata": {"age": 1' + b"0" * 5000 + b"}}", "reject", "too long"),
        ("bundle", "JSON with NaN", b'{"metadata": {"age": NaN}}', "accept", None),
        ("bundle", "tar.gz named .zip", b"\x1f\x8b\x08\x00" + b"\0" * 100, "reject", "not a readable"),
        ("bundle", "empty .zip file", b"", "reject", "not a readable"),
        ("bundle", "empty .json file", b"", "reject", "not valid JSON"),
    ]


#: case ids (from a bundle's folder name or metadata.json, or --case-id): kept as text, never a path
CASE_IDS = [
    ("case_id", "path traversal", "../../etc/passwd"), ("case_id", "absolute path", "/etc/shadow"),
    ("case_id", "Windows path", "C:\\Windows\\system32\\cmd.exe"), ("case_id", "UNC path", "\\\\server\\share\\x"),
    ("case_id", "NUL byte", "case\x00.pdf"), ("case_id", "newlines", "case\nid\r\n"),
    ("case_id", "HTML", "<script>alert(1)</script>"), ("case_id", "formula", "=HYPERLINK(\"http://evil.example\")"),
    ("case_id", "reserved device name", "CON"), ("case_id", "dots only", ".."), ("case_id", "500 characters", "x" * 500),
    ("case_id", "bidi override", "report\u202efdp.exe"), ("case_id", "emoji and CJK", "病例-😀-7"),
    ("case_id", "URL", "https://evil.example/?a=1&b=2"), ("case_id", "shell", "$(rm -rf /); `id`"),
]


def case_ids():
    return [(c, n, v, "accept", None) for c, n, v in CASE_IDS]


def corpus():
    return (images() + images_more() + masks() + masks_more() + notes() + notes_more() + metadata() + metadata_more()
            + spectra() + spectra_more() + bundles() + bundles_more())


def verdict_counts() -> dict[str, int]:
    from collections import Counter

    c = Counter(v for _, _, _, v, _ in corpus() + case_ids())
    return dict(c)


def as_json(value) -> str:
    return json.dumps(value)
