"""Real-data layouts on tiny fixture folders: items, labels, lesion-grouped splits, generated notes,
parsed metadata, layout detection, and the message of every data error."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import DataError
from core.data.loaders import (HAM_LABELS, ham_note, load_dataset, load_generic_csv, load_ham10000,
                               load_seed_layout, validate_images)

HAM_HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization"
SITES = ["back", "face", "lower extremity", "trunk", "scalp", "unknown"]


def write_image(path: Path, size=(32, 32), colour=(180, 90, 60), mask=False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mask:
        arr = np.zeros(size[::-1], np.uint8)
        arr[8:24, 8:24] = 255
        Image.fromarray(arr, "L").save(path)
    else:
        Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture()
def ham_root(tmp_path: Path) -> Path:
    """7 classes x 4 lesions; every second lesion photographed twice; images in two part folders."""
    root = tmp_path / "ham"
    rows, n = [HAM_HEADER], 0
    for dx in HAM_LABELS:
        for lesion in range(4):
            for _shot in range(1 + lesion % 2):
                n += 1
                image_id = f"ISIC_{n:07d}"
                age = "" if n == 3 else str(20 + 5 * (n % 12))
                sex = ["male", "female", "unknown"][n % 3]
                rows.append(f"HAM_{dx}{lesion},{image_id},{dx},histo,{age},{sex},{SITES[n % len(SITES)]}")
                write_image(root / f"HAM10000_images_part_{1 + n % 2}" / f"{image_id}.jpg")
                if n % 2 == 0:
                    write_image(root / "masks" / f"{image_id}_segmentation.png", mask=True)
    (root / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def rewrite_csv(path: Path, fn) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


# ---------------------------------------------------------------- HAM10000

def test_ham10000_items_labels_and_lesion_grouped_splits(ham_root: Path):
    cohort = load_ham10000(ham_root, masks_dir=ham_root / "masks", seed=3)
    assert cohort.labels == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert len(cohort.items) == 42 and cohort.modalities == ["image", "note", "metadata"]
    splits_of: dict[str, set[str]] = {}
    for it in cohort.items:
        splits_of.setdefault(it.group, set()).add(it.split)
        assert it.image_path is not None and it.image_path.name == f"{it.case_id}.jpg"
    assert len(splits_of) == 28 and all(len(s) == 1 for s in splits_of.values())
    assert {it.split for it in cohort.items} == {"train", "val", "test"}
    assert sum(it.mask_path is not None for it in cohort.items) == 21 == cohort.info["n_masks"]
    assert [f["name"] for f in cohort.schema] == ["age", "sex", "localization"]
    assert len(next(f for f in cohort.schema if f["name"] == "localization")["categories"]) == 15
    first = cohort.items[0]
    assert first.metadata == {"age": 25.0, "sex": "female", "localization": "face"}
    assert first.note == "A 25-year-old female with a lesion on the face."
    no_age = next(it for it in cohort.items if it.case_id == "ISIC_0000003")
    assert no_age.metadata["age"] is None and no_age.note.startswith("A male with a lesion")
    assert all(it.to_case().image is not None for it in cohort.items[:5])
    assert validate_images(cohort) == 42
    again = load_ham10000(ham_root, seed=3)
    assert [it.split for it in again.items] == [it.split for it in cohort.items]


def test_ham_note_template_omits_unknown_fields():
    assert ham_note(45, "male", "back") == "A 45-year-old male with a lesion on the back."
    assert ham_note(80, "female", "genital") == "An 80-year-old female with a lesion in the genital area."
    assert ham_note(None, "unknown", "unknown") == "A patient with a skin lesion."
    assert ham_note(50.0, None, "lower extremity") == "A 50-year-old patient with a lesion on the lower extremity."


def test_ham_notes_can_be_turned_off(ham_root: Path):
    cohort = load_ham10000(ham_root, notes="none")
    assert cohort.modalities == ["image", "metadata"] and all(it.note is None for it in cohort.items)


def test_ham_missing_column(ham_root: Path):
    rewrite_csv(ham_root / "HAM10000_metadata.csv", lambda ls: [",".join(l.split(",")[:2] + l.split(",")[3:]) for l in ls])
    with pytest.raises(DataError, match=r"HAM10000_metadata\.csv: missing column\(s\) dx"):
        load_ham10000(ham_root)


def test_ham_duplicate_image_id(ham_root: Path):
    rewrite_csv(ham_root / "HAM10000_metadata.csv", lambda ls: ls + [ls[1]])
    with pytest.raises(DataError, match=r"duplicate image_id values: 'ISIC_0000001' on lines 2 and 44"):
        load_ham10000(ham_root)


def test_ham_missing_image(ham_root: Path):
    (ham_root / "HAM10000_images_part_2" / "ISIC_0000005.jpg").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) not found .*ISIC_0000005\.jpg \(line 6\)"):
        load_ham10000(ham_root)


def test_ham_unknown_label_and_bad_category(ham_root: Path):
    rewrite_csv(ham_root / "HAM10000_metadata.csv", lambda ls: ls[:3] + [ls[3].replace(",akiec,", ",scc,")] + ls[4:])
    with pytest.raises(DataError, match=r"unknown label\(s\) in column 'dx': 'scc' on line 4; expected one of akiec"):
        load_ham10000(ham_root)
    rewrite_csv(ham_root / "HAM10000_metadata.csv", lambda ls: [l.replace(",scc,", ",akiec,").replace(",face", ",elbow")
                                                                for l in ls])
    with pytest.raises(DataError, match=r"line \d+: localization 'elbow' is not one of abdomen"):
        load_ham10000(ham_root)


def test_validate_images_lists_bad_files(ham_root: Path):
    (ham_root / "HAM10000_images_part_1" / "ISIC_0000002.jpg").write_bytes(b"not a jpeg at all")
    write_image(ham_root / "masks" / "ISIC_0000004_segmentation.png", size=(20, 20), mask=True)
    cohort = load_ham10000(ham_root, masks_dir=ham_root / "masks")
    with pytest.raises(DataError) as e:
        validate_images(cohort)
    msg = str(e.value)
    assert msg.startswith("2 of 42 images can't be used")
    assert "ISIC_0000002 (ISIC_0000002.jpg): the image file could not be read" in msg
    assert "ISIC_0000004 mask (ISIC_0000004_segmentation.png): the mask is 20 x 20 pixels" in msg


# ---------------------------------------------------------------- seed 003 layout

@pytest.fixture()
def seed_dir(tmp_path: Path) -> Path:
    root = tmp_path / "seed"
    rows, texts = ["image_id,label"], {}
    for i in range(18):
        label = ["nv", "mel", "bcc"][i % 3]
        rows.append(f"img{i:02d},{label}")
        texts[f"img{i:02d}"] = f"Lesion {i}, itchy for {i + 1} weeks."
        write_image(root / "images" / f"img{i:02d}.{'png' if i % 2 else 'jpg'}")
    del texts["img17"]
    (root / "image.csv").write_text("\n".join(rows) + "\n")
    (root / "response.json").write_text(json.dumps(texts))
    return root


def test_seed_layout(seed_dir: Path):
    cohort = load_seed_layout(seed_dir / "image.csv", seed_dir / "response.json", seed_dir / "images")
    assert cohort.labels == ["bcc", "mel", "nv"] and cohort.modalities == ["image", "note"]
    assert len(cohort.items) == 18 and cohort.schema == [] and all(not it.metadata for it in cohort.items)
    assert cohort.items[3].note == "Lesion 3, itchy for 4 weeks." and cohort.items[17].note is None
    assert cohort.items[1].image_path.name == "img01.png"
    assert {it.split for it in cohort.items} == {"train", "val", "test"}
    assert load_dataset(seed_dir).labels == cohort.labels        # detected: one CSV + one JSON


def test_seed_layout_errors(seed_dir: Path):
    args = (seed_dir / "image.csv", seed_dir / "response.json", seed_dir / "images")
    with pytest.raises(DataError, match=r"image\.csv: unknown label\(s\) in column 'label': 'mel' on line 3"):
        load_seed_layout(*args, labels=["nv", "bcc"])
    (seed_dir / "images" / "img04.jpg").unlink()
    with pytest.raises(DataError, match=r"not found below .*images: img04 \(line 6\)"):
        load_seed_layout(*args)
    (seed_dir / "response.json").write_text("{oops")
    with pytest.raises(DataError, match=r"response\.json: not valid JSON"):
        load_seed_layout(*args)


# ---------------------------------------------------------------- generic CSV

@pytest.fixture()
def generic_csv(tmp_path: Path) -> Path:
    root = tmp_path / "generic"
    rows = ["case_id,label,note,image_path,mask_path,spectrum_path,age,site,score"]
    for i in range(12):
        write_image(root / "img" / f"c{i}.png")
        write_image(root / "img" / f"c{i}_mask.png", mask=True)
        wl = np.linspace(900, 1000, 20)
        (root / "spec").mkdir(parents=True, exist_ok=True)
        (root / "spec" / f"c{i}.csv").write_text("wavelength,value\n" + "\n".join(f"{w},{np.sin(w + i)}" for w in wl))
        age = "" if i == 5 else str(30 + i)
        rows.append(f"c{i},{'benign' if i % 2 else 'malignant'},note {i},img/c{i}.png,img/c{i}_mask.png,"
                    f"spec/c{i}.csv,{age},{['arm', 'leg', ''][i % 3]},{i}")
    path = root / "cases.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_generic_csv(generic_csv: Path):
    cohort = load_generic_csv(generic_csv, seed=1)
    assert cohort.labels == ["benign", "malignant"]
    assert cohort.modalities == ["image", "note", "metadata", "spectrum"]
    schema = {f["name"]: f for f in cohort.schema}
    assert schema["age"]["type"] == "numeric" and schema["score"]["type"] == "numeric"
    assert schema["site"] == {**schema["site"], "type": "categorical", "categories": ["arm", "leg"]}
    it = cohort.items[5]
    assert it.metadata == {"age": None, "site": None, "score": 5.0} and it.note == "note 5"
    assert it.image_path == generic_csv.parent / "img" / "c5.png" and it.spectrum.shape == (20, 2)
    assert cohort.spectrum_grid == pytest.approx(list(np.linspace(900, 1000, 20)))
    assert {it.split for it in cohort.items} == {"train", "val", "test"}
    case = it.to_case()
    assert case.mask is not None and case.spectrum.shape == (20, 2)
    assert load_dataset(generic_csv).labels == cohort.labels


def test_generic_csv_split_column_is_respected(tmp_path: Path):
    path = tmp_path / "t.csv"
    path.write_text("case_id,label,split,bmi\na,x,train,20\nb,y,validation,31.5\nc,x,test,\n")
    cohort = load_dataset(path)
    assert [it.split for it in cohort.items] == ["train", "val", "test"]
    assert cohort.modalities == ["metadata"] and cohort.items[1].metadata == {"bmi": 31.5}
    path.write_text("case_id,label,split\na,x,train\nb,y,holdout\n")
    with pytest.raises(DataError, match=r"t\.csv, line 3: split 'holdout' is not one of train, val, test"):
        load_generic_csv(path)


def test_generic_csv_errors(tmp_path: Path, generic_csv: Path):
    path = tmp_path / "bad.csv"
    path.write_text("")
    with pytest.raises(DataError, match=r"bad\.csv: the file is empty"):
        load_generic_csv(path)
    path.write_text("case_id,label\n")
    with pytest.raises(DataError, match=r"bad\.csv: the file has a header but no rows"):
        load_generic_csv(path)
    path.write_text("case_id,diagnosis\na,x\n")
    with pytest.raises(DataError, match=r"bad\.csv: missing column\(s\) label; the header has case_id, diagnosis"):
        load_generic_csv(path)
    path.write_text("case_id,label\na,x\nb,y\na,y\n")
    with pytest.raises(DataError, match=r"duplicate case_id values: 'a' on lines 2 and 4"):
        load_generic_csv(path)
    path.write_text("case_id,label\na,x\nb,z\n")
    with pytest.raises(DataError, match=r"unknown label\(s\) in column 'label': 'z' on line 3; expected one of x, y"):
        load_generic_csv(path, labels=["x", "y"])
    (generic_csv.parent / "img" / "c3.png").unlink()
    with pytest.raises(DataError, match=r"cases\.csv: 1 file\(s\) not found .*image_path 'img/c3\.png' \(line 5\)"):
        load_generic_csv(generic_csv)


def test_load_dataset_detects_ham_and_refuses_unknown_layouts(ham_root: Path, tmp_path: Path):
    assert load_dataset(ham_root).name == "ham10000"
    (tmp_path / "odd").mkdir()
    with pytest.raises(DataError, match=r"not a known layout \(found 0 CSV and 0 JSON files\)"):
        load_dataset(tmp_path / "odd")
    with pytest.raises(DataError, match=r"no such file or folder"):
        load_dataset(tmp_path / "nowhere")
