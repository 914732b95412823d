"""A results set on disk: Parquet parts (``part-00000.parquet`` ...) and ``manifest.json``.

The folder may be a local path or any URI pyarrow's filesystems understand (``s3://bucket/run``,
``gs://...``, ``hdfs://...``): every read and write goes through ``pyarrow.fs``. Each part is written
whole to a temporary name and then moved into place, and the manifest is rewritten after every part,
so an interrupted run leaves only complete parts behind and a rerun skips the cases they hold.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .rows import MODALITIES

MANIFEST = "manifest.json"
FORMAT = "fusionlens-cohort-results/1"

_F, _S, _B, _I = pa.float64(), pa.string(), pa.bool_(), pa.int64()
FIELDS: list[tuple[str, pa.DataType]] = [
    ("case_id", _S), ("package", _S), ("package_sha256", _S), ("variant", _S), ("split", _S), ("label", _S),
    ("evidence", _S), ("status", _S), ("error", _S),
    ("pred_label", _S), ("pred_index", _I), ("target", _I), ("probabilities", pa.list_(_F)), ("p_pred", _F),
    ("p_true", _F), ("correct", _B), ("loss", _F),
    ("total_uncertainty", _F), ("normalised_entropy", _F), ("aleatoric", _F), ("epistemic", _F), ("refer", _B),
    ("calibration_temperature", _F), ("present", _S),
    *[(f"weight_{m}", _F) for m in MODALITIES], ("fusion_temperature", _F), ("level_weights", pa.list_(_F)),
    ("gate_spread", _F), ("gate_polarisation", _F),
    *[(f"shapley_{m}", _F) for m in MODALITIES], ("shapley_full", _F), ("shapley_none", _F), ("top_modality", _S),
    ("cam_lesion", _F), ("cam_context", _F), ("cam_background", _F), ("cam_lesion_ratio", _F),
    ("cam_context_ratio", _F), ("cam_hit_lesion", _B), ("cam_small", pa.list_(pa.float16())),
    ("note_top_words", pa.list_(_S)), ("note_top_scores", pa.list_(_F)),
    ("table_top_features", pa.list_(_S)), ("table_top_scores", pa.list_(_F)), ("table_top_values", pa.list_(_S)),
    ("fused", pa.list_(pa.float16())),
    ("age", _F), ("sex", _S), ("site", _S), ("metadata_json", _S), ("spectrum_json", _S), ("note", _S), ("image_path", _S),
    ("mask_path", _S),
    ("thumbnail", pa.binary()), ("seconds", _F), ("cpu_seconds", _F),
]
SCHEMA = pa.schema(FIELDS)


def rows_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts; missing keys are null) -> a table with the fixed results schema."""
    cols = {name: [r.get(name) for r in rows] for name, _ in FIELDS}
    return pa.table({name: pa.array(cols[name], type=t) for name, t in FIELDS}, schema=SCHEMA)


class ResultsStore:
    def __init__(self, location: str):
        if "://" in location:
            self.fs, self.root = pafs.FileSystem.from_uri(location)
        else:
            from pathlib import Path

            self.fs, self.root = pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())
        self.location = location

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path(MANIFEST)).type == pafs.FileType.File

    def part_files(self) -> list[str]:
        info = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        return sorted(i.path for i in info if i.type == pafs.FileType.File
                      and i.base_name.startswith("part-") and i.base_name.endswith(".parquet"))

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.exists():
            return None
        with self.fs.open_input_stream(self.path(MANIFEST)) as f:
            return json.loads(f.read().decode("utf-8"))

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        self.fs.create_dir(self.root, recursive=True)
        tmp = self.path(MANIFEST + ".tmp")
        with self.fs.open_output_stream(tmp) as f:
            f.write(json.dumps(manifest, indent=2, default=str).encode("utf-8"))
        self.fs.move(tmp, self.path(MANIFEST))

    def write_part(self, rows: Sequence[Mapping[str, Any]], index: int) -> str:
        self.fs.create_dir(self.root, recursive=True)
        name = f"part-{index:05d}.parquet"
        tmp = self.path(name + ".tmp")
        pq.write_table(rows_table(rows), tmp, filesystem=self.fs)
        self.fs.move(tmp, self.path(name))
        return name

    def read(self, columns: Iterable[str] | None = None) -> pa.Table:
        """Every part as one table (``columns``: these plus case_id and package); a (case, package) written twice
        (a retried failure) keeps its last row."""
        files = self.part_files()
        cols = None if columns is None else list(dict.fromkeys(["case_id", "package", *columns]))
        if not files:
            return SCHEMA.empty_table() if cols is None else SCHEMA.empty_table().select(cols)
        tables = [pq.read_table(p, filesystem=self.fs, columns=cols, schema=SCHEMA) for p in files]
        t = pa.concat_tables(tables)
        keys = [f"{c}\x00{p}" for c, p in zip(t.column("case_id").to_pylist(), t.column("package").to_pylist())]
        last = {k: i for i, k in enumerate(keys)}
        if len(last) < len(keys):
            t = t.take(sorted(last.values()))
        return t

    def next_part_index(self) -> int:
        files = self.part_files()
        return 1 + max((int(p.rsplit("part-", 1)[1].split(".")[0]) for p in files), default=-1)
