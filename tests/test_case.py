"""Input validation: each bad channel gets one sentence naming the field; good fields are kept."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core import Case, CaseError
from core.encoders import TabularSchema
from tiny import SCHEMA


def png_bytes(size=(40, 30), mode="RGB", color=(200, 100, 50)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def test_valid_case_from_bytes_and_csv():
    csv = b"wavelength,absorbance\n" + b"\n".join(f"{1000 + i},{i * 0.1}".encode() for i in range(20))
    case = Case.from_inputs(image=png_bytes(), note=b"Itchy lesion.\x07", metadata={"age": 40}, spectrum=csv)
    assert case.image.size == (40, 30) and case.image.mode == "RGB"
    assert case.note == "Itchy lesion."  # control character removed
    assert case.spectrum.shape == (20, 2)
    assert case.present() == {"image": True, "note": True, "metadata": True, "spectrum": True}


@pytest.mark.parametrize("data,needle", [
    (b"", "empty"),
    (b"GIF89a not really", "could not be read"),
    (png_bytes()[:60], "could not be read"),
    (b"%PDF-1.4 hello", "could not be read"),
    (png_bytes((8, 8)), "at least 16 x 16"),
])
def test_bad_images(data, needle):
    with pytest.raises(CaseError) as e:
        Case.from_inputs(image=data)
    assert list(e.value.errors) == ["image"] and needle in e.value.errors["image"]


def test_decompression_bomb_is_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, "PNG")  # tiny file, 144 M pixels declared
    assert len(buf.getvalue()) < 100_000
    with pytest.raises(CaseError, match="more than the 40,000,000 pixels allowed"):
        Case.from_inputs(image=buf.getvalue())


@pytest.mark.parametrize("mode,color", [("RGBA", (10, 20, 30, 0)), ("P", 3), ("L", 128), ("CMYK", (0, 0, 0, 0)), ("I;16", 4000)])
def test_image_modes_become_rgb(mode, color):
    buf = io.BytesIO()
    Image.new(mode, (20, 20), color).save(buf, "TIFF" if mode in ("CMYK", "I;16") else "PNG")
    assert Case.from_inputs(image=buf.getvalue()).image.mode == "RGB"


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert Case.from_inputs(image=buf.getvalue()).image.size == (20, 40)


def test_mask_checks():
    mask = Image.new("L", (40, 30), 0)
    mask.paste(255, (10, 10, 20, 20))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    case = Case.from_inputs(image=png_bytes(), mask=buf.getvalue())
    assert case.mask.dtype == bool and case.mask.sum() == 100
    with pytest.raises(CaseError, match="mask: The mask is 20 x 20 pixels but the image is 40 x 30"):
        Case.from_inputs(image=png_bytes(), mask=png_bytes((20, 20)))
    with pytest.raises(CaseError, match="needs an image"):
        Case.from_inputs(mask=buf.getvalue())
    gradient = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))
    g = io.BytesIO()
    Image.fromarray(gradient).save(g, "PNG")
    with pytest.raises(CaseError, match="not binary"):
        Case.from_inputs(image=png_bytes(), mask=g.getvalue())


def test_notes():
    assert Case.from_inputs(note="   ").note is None
    assert Case.from_inputs(note="Läsion 病变 🙂 \u202eevil").note.startswith("Läsion 病变 🙂")
    with pytest.raises(CaseError, match="not valid UTF-8"):
        Case.from_inputs(note=b"\xff\xfe\xfa")
    with pytest.raises(CaseError, match="shorten it"):
        Case.from_inputs(note="x" * 1_000_000)


@pytest.mark.parametrize("csv,needle", [
    (b"a,b\nc,d\n", "non-numeric"),
    (b"1,2\n3\n", "different numbers of columns"),
    (b"1,2\n3,4\n", "between 16"),
    (b"\n".join(b"%d,nan" % i for i in range(20)), "NaN"),
    (b"\n".join(b"1,%d" % i for i in range(20)), "repeat"),
    (b"\xff\xfe", "not a text CSV"),
])
def test_bad_spectra(csv, needle):
    with pytest.raises(CaseError, match=needle):
        Case.from_inputs(spectrum=csv)


def test_all_errors_reported_and_partial_keeps_good_fields():
    with pytest.raises(CaseError) as e:
        Case.from_inputs(image=b"junk", note=b"\xff", metadata=[1, 2], spectrum=b"x")
    assert set(e.value.errors) == {"image", "note", "metadata", "spectrum"}
    case = Case.from_inputs(image=b"junk", note="fine note", metadata={"age": 3}, partial=True)
    assert case.note == "fine note" and case.metadata == {"age": 3} and case.image is None
    assert set(case.extras["errors"]) == {"image"}


def test_schema_validation_messages():
    schema = TabularSchema(SCHEMA)
    values, warnings = schema.validate({"age": "42", "sex": "Male", "site": "", "agee": 3, "label": "nv"})
    assert values == {"age": 42.0, "sex": "male", "site": None}
    assert warnings == ["Ignored metadata not used by this model: agee."]
    with pytest.raises(CaseError) as e:
        schema.validate({"age": 250, "sex": "robot", "site": "face"})
    assert e.value.errors["metadata.age"] == "age (years) = 250 is outside the allowed range (0 to 120 years)."
    assert e.value.errors["metadata.sex"] == "sex 'robot' is not a known category; use one of: female, male."
    for bad in (float("nan"), float("inf"), "abc", True):
        with pytest.raises(CaseError, match="must be a finite number"):
            schema.validate({"age": bad})
