"""A cohort split as in-memory tensors, with the outputs of frozen encoders computed once and cached.

Stage 2 of training (every fusion variant + head) runs on these: the frozen image and note encoders
(the expensive ones) are never run again, while the cheap trainable encoders (table, spectrum) get
their prepared input tensors. A modality whose encoder is trainable and expensive (a fine-tuned
image encoder) is prepared lazily per batch instead.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..case import Case
from ..data import CohortItem
from ..encoders import ModalityFeatures
from ..model import MultimodalClassifier
from ..package import prepare_batch, sha256_file

log = logging.getLogger(__name__)


def cache_root() -> Path:
    return Path(os.environ.get("FUSIONLENS_CACHE", Path.home() / ".cache" / "fusionlens"))


def _features_to_dict(f: ModalityFeatures) -> dict[str, torch.Tensor]:
    return {"pooled": f.pooled, "l0": f.levels[0], "l1": f.levels[1], "l2": f.levels[2], "tokens": f.tokens,
            "mask": f.token_mask}


def _dict_to_features(d: dict[str, torch.Tensor]) -> ModalityFeatures:
    return ModalityFeatures(d["pooled"], (d["l0"], d["l1"], d["l2"]), d["tokens"], d["mask"].bool())


def _pad_cat(chunks: list[ModalityFeatures]) -> ModalityFeatures:
    """Concatenate batches whose token counts differ (notes) by right-padding with masked tokens."""
    n = max(c.tokens.shape[1] for c in chunks)
    toks, masks = [], []
    for c in chunks:
        pad = n - c.tokens.shape[1]
        toks.append(torch.nn.functional.pad(c.tokens, (0, 0, 0, pad)))
        masks.append(torch.nn.functional.pad(c.token_mask, (0, pad), value=False))
    return ModalityFeatures(torch.cat([c.pooled for c in chunks]),
                            tuple(torch.cat([c.levels[i] for c in chunks]) for i in range(3)),  # type: ignore[arg-type]
                            torch.cat(toks), torch.cat(masks))


@dataclass
class SplitTensors:
    """One split: labels [N], presence [N, M], and per modality either cached features (frozen
    encoder, rows of present cases only, in order), prepared input tensors (rows of present cases),
    or the raw values for lazy preparation."""

    ids: list[str]
    modalities: list[str]                    # column order of ``present``
    labels: torch.Tensor
    present: torch.Tensor
    cached: dict[str, ModalityFeatures]
    prepared: dict[str, dict[str, torch.Tensor]]
    lazy: dict[str, list[Any]]
    row_of: dict[str, torch.Tensor]          # modality -> [N] index into its present rows (-1 if absent)

    def __len__(self) -> int:
        return len(self.ids)

    def presence(self, model: MultimodalClassifier, idx: torch.Tensor) -> torch.Tensor:
        """[len(idx), M] presence in ``model``'s modality order (a model may use a subset)."""
        return self.present[idx][:, [self.modalities.index(m) for m in model.modalities]]

    def batch(self, model: MultimodalClassifier, idx: torch.Tensor, present: torch.Tensor | None = None) -> dict[str, Any]:
        """Model inputs for rows ``idx``. ``present`` (model order) may hide modalities (modality dropout)."""
        present = self.presence(model, idx) if present is None else present
        inputs: dict[str, Any] = {}
        for j, m in enumerate(model.modalities):
            rows = self.row_of[m][idx][present[:, j]]
            if len(rows) == 0:
                inputs[m] = None
            elif m in self.cached:
                c = self.cached[m]
                inputs[m] = ModalityFeatures(c.pooled[rows], tuple(l[rows] for l in c.levels),  # type: ignore[arg-type]
                                             c.tokens[rows], c.token_mask[rows])
            elif m in self.prepared:
                inputs[m] = {k: v[rows] for k, v in self.prepared[m].items()}
            else:
                inputs[m] = model.encoders[m].prepare([self.lazy[m][int(r)] for r in rows])
        return {"inputs": inputs, "present": present, "labels": self.labels[idx]}


def _cache_key(model: MultimodalClassifier, m: str, items: Sequence[CohortItem], tag: str) -> str:
    return _encoder_cache_key(model.encoders[m], items, tag, m)


def _pre_cache_key(enc, items: Sequence[CohortItem], tag: str, modality: str = "image") -> str:
    """Key of a trainable encoder's cached frozen part: only what that part depends on
    (``enc.frozen_config()``, e.g. the dual expert's backbone and crop margin, not its gate)."""
    return _key(enc.frozen_config(), items, tag, modality=modality)


def _encoder_cache_key(enc, items: Sequence[CohortItem], tag: str, modality: str | None = None) -> str:
    from ..encoders import encoder_config

    # weights trained here (stage 1): the cache depends on them too
    return _key(encoder_config(enc), items, tag, None if enc.external_weights else enc.state_dict(),
                modality=modality or getattr(enc, "modality", "image"))


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _file_hash(path: Path | str | None) -> str:
    """sha256 of a file's bytes, memoised per (path, size, mtime) for this process."""
    if path is None:
        return "-"
    st = os.stat(path)
    k = (str(path), st.st_size, st.st_mtime_ns)
    if k not in _FILE_HASHES:
        _FILE_HASHES[k] = sha256_file(Path(path))
    return _FILE_HASHES[k]


def item_fingerprint(it: CohortItem, modality: str) -> str:
    """What one item feeds ``modality``'s encoder, by content: the image (and lesion mask) bytes, the
    note, the metadata, the spectrum. Case ids alone are not enough — two cohorts generated with other
    seeds (or another HAM10000 copy) reuse the same ids for different cases, and a cache keyed by ids
    would hand one cohort's features to another. Items without file paths (anything with ``to_case()``)
    are fingerprinted from the case they build."""
    if modality == "image" and getattr(it, "image_path", None) is not None:
        return f"{_file_hash(it.image_path)}|{_file_hash(getattr(it, 'mask_path', None))}"
    if modality != "image" and hasattr(it, modality):
        value = getattr(it, modality)
    else:
        case = it.to_case()
        value = getattr(case, modality)
        if modality == "image":
            value = None if value is None else (np.asarray(value), None if case.mask is None else np.asarray(case.mask))
    h = hashlib.sha256()
    if isinstance(value, tuple):
        for v in value:
            h.update(b"-" if v is None else np.ascontiguousarray(v).tobytes())
    elif isinstance(value, np.ndarray):
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        h.update(json.dumps(value, sort_keys=True, default=str).encode())
    else:
        h.update(("-" if value is None else str(value)).encode())
    return h.hexdigest()


def _key(config: Any, items: Sequence[CohortItem], tag: str, state: dict[str, torch.Tensor] | None = None,
         modality: str = "image") -> str:
    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for k, v in sorted((state or {}).items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    h.update(tag.encode())
    for it in items:
        h.update(f"{it.case_id}|{item_fingerprint(it, modality)}".encode())
    return h.hexdigest()[:20]


def build_split(model: MultimodalClassifier, items: Sequence[CohortItem], labels: Sequence[str], tag: str = "",
                chunk: int = 128, use_cache: bool = True, progress: bool = False) -> SplitTensors:
    """Validate every item through the same path as an upload (Case / schema), prepare the cheap
    modalities, and run each frozen encoder once (loaded from the on-disk cache when present)."""
    model.eval()
    frozen = [m for m in model.modalities if model.encoders[m].frozen]
    # trainable encoders with a frozen backbone (the dual expert): the backbone outputs are computed
    # once, like a frozen encoder's, and the trainable part runs on them every batch
    pre = [m for m in model.modalities if m not in frozen and model.encoders[m].dual_expert]
    cheap = [m for m in model.modalities if m not in frozen and m not in pre and m in ("metadata", "spectrum")]
    lazy_m = [m for m in model.modalities if m not in frozen and m not in cheap and m not in pre]
    pre_files = {m: cache_root() / "features" / f"{m}-pre-{_pre_cache_key(model.encoders[m], items, tag)}.safetensors"
                 for m in pre}
    pre_todo = [m for m in pre if not (use_cache and pre_files[m].is_file())]
    # the dual expert's global stream is the plain frozen image encoder: reuse its cache when there is one
    global_files = {m: cache_root() / "features" / f"{m}-{_encoder_cache_key(model.encoders[m].backbone, items, tag)}.safetensors"
                    for m in pre_todo if model.encoders[m].dual_expert}
    pre_parts: dict[str, list[dict[str, torch.Tensor]]] = {m: [] for m in pre_todo}
    cache_files = {m: cache_root() / "features" / f"{m}-{_cache_key(model, m, items, tag)}.safetensors" for m in frozen}
    todo = [m for m in frozen if not (use_cache and cache_files[m].is_file())]
    chunks: dict[str, list[ModalityFeatures]] = {m: [] for m in todo}
    present_rows, label_idx, prepared_parts = [], [], {m: [] for m in cheap}
    lazy: dict[str, list[Any]] = {m: [] for m in lazy_m}
    for start in range(0, len(items), chunk):
        part = items[start:start + chunk]
        cases: list[Case] = [it.to_case(with_mask=False) for it in part]
        # encoders whose outputs come from the disk cache need no preprocessing (the dual expert's
        # lesion crops need a segmentation per image, so this matters)
        inputs, present, _ = prepare_batch(model, cases, skip={m for m in frozen if m not in todo} |
                                           {m for m in pre if m not in pre_todo})
        present_rows.append(present)
        label_idx += [labels.index(it.label) for it in part]
        for m in cheap:
            if inputs[m] is not None:
                prepared_parts[m].append(inputs[m])
        for m in lazy_m:
            lazy[m] += [getattr(c, m) for c, p in zip(cases, present[:, model.modalities.index(m)]) if p]
        with torch.inference_mode():
            for m in todo:
                if inputs[m] is not None:
                    chunks[m].append(model.encoders[m](**inputs[m]))
            for m in pre_todo:
                if inputs[m] is not None:
                    enc = model.encoders[m]
                    if m in global_files and global_files[m].is_file():
                        loc = enc.local_backbone(inputs[m]["local_pixels"])
                        pre_parts[m].append({"l_pooled": loc.pooled, "l_l0": loc.levels[0], "l_l1": loc.levels[1],
                                             "l_l2": loc.levels[2], "l_tokens": loc.tokens})
                    else:
                        pre_parts[m].append(enc.frozen_inputs(**inputs[m]))
        if progress:
            log.info("prepared %d/%d cases", min(start + chunk, len(items)), len(items))
    present = torch.cat(present_rows)
    cached: dict[str, ModalityFeatures] = {}
    for m in frozen:
        if m in todo:
            feats = _pad_cat(chunks[m]) if chunks[m] else None
            if feats is not None and use_cache:
                cache_files[m].parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_files[m].with_suffix(f".tmp{os.getpid()}")
                save_file({k: v.contiguous() for k, v in _features_to_dict(feats).items()}, str(tmp))
                tmp.replace(cache_files[m])  # atomic: concurrent DDP ranks never read half a file
        else:
            feats = _dict_to_features(load_file(str(cache_files[m])))
        if feats is not None:
            cached[m] = feats
    prepared = {m: {k: torch.cat([p[k] for p in prepared_parts[m]]) for k in prepared_parts[m][0]}
                for m in cheap if prepared_parts[m]}
    for m in pre:
        if m in pre_todo:
            if not pre_parts[m]:
                continue
            d = {k: torch.cat([p[k] for p in pre_parts[m]]) for k in pre_parts[m][0]}
            if "g_pooled" not in d:
                g = _dict_to_features(load_file(str(global_files[m])))
                d.update({"g_pooled": g.pooled, "g_l0": g.levels[0], "g_l1": g.levels[1], "g_l2": g.levels[2],
                          "g_tokens": g.tokens})
            if use_cache:
                pre_files[m].parent.mkdir(parents=True, exist_ok=True)
                tmp = pre_files[m].with_suffix(f".tmp{os.getpid()}")
                save_file({k: v.contiguous() for k, v in d.items()}, str(tmp))
                tmp.replace(pre_files[m])
        else:
            d = load_file(str(pre_files[m]))
        prepared[m] = d
    row_of = {}
    for j, m in enumerate(model.modalities):
        col = present[:, j]
        r = torch.full((len(items),), -1, dtype=torch.long)
        r[col] = torch.arange(int(col.sum()))
        row_of[m] = r
    return SplitTensors([it.case_id for it in items], list(model.modalities), torch.tensor(label_idx), present, cached,
                        prepared, lazy, row_of)


class IndexDataset(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def modality_dropout(present: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hide each present modality with probability p, never all of a case's modalities."""
    if p <= 0:
        return present
    drop = torch.rand(present.shape, generator=generator) < p
    out = present & ~drop
    empty = ~out.any(1)
    out[empty] = present[empty]
    return out


def class_sample_weights(labels: torch.Tensor, n_classes: int) -> np.ndarray:
    counts = torch.bincount(labels, minlength=n_classes).float().clamp_min(1)
    return (1.0 / counts)[labels].numpy()



#: the cached keys of one dual-expert stream (``DualExpertEncoder.frozen_inputs``): "l_" lesion, "g_" global
DUAL_STREAMS = ("l_", "g_")
DUAL_KEYS = ("pooled", "l0", "l1", "l2", "tokens")


def stream_fills(model: MultimodalClassifier, data: SplitTensors, fill: str = "other") -> dict[str, dict[str, torch.Tensor]]:
    """Per dual-expert modality with cached streams: what ``stream_dropout`` needs. For ``fill="mean"`` the
    training split's mean of every cached key of each stream; for ``fill="other"`` nothing (an empty dict: the
    kept stream is copied). Raises when the model has no dual-expert encoder with cached streams."""
    fills: dict[str, dict[str, torch.Tensor]] = {}
    for m in model.modalities:
        d = data.prepared.get(m)
        if getattr(model.encoders[m], "dual_expert", False) and d is not None and "l_pooled" in d:
            fills[m] = {k: v.float().mean(0) for k, v in d.items() if k.startswith(DUAL_STREAMS)} if fill == "mean" else {}
    if not fills:
        raise ValueError("train.stream_dropout blanks a dual-expert image encoder's cached lesion / global streams; "
                         "this model has none (set it to 0).")
    return fills


def stream_dropout(inputs: dict[str, Any], fills: dict[str, dict[str, torch.Tensor]], p: float,
                   generator: torch.Generator | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Blank one stream of each dual-expert input per case with probability ``p``: the lesion stream for half
    of those cases, the global stream for the other half, never both. Returns the new inputs (the split's
    tensors are not modified) and, per modality, which stream each case lost: [n] int, 0 none, 1 the lesion
    stream, 2 the global stream.

    What a blank shows (``fills`` from ``stream_fills``):

    * empty fill (``"other"``, the default): the kept stream's own features, so both streams show the same
      thing. The mix ``w_l f_l + w_g f_g`` is then that stream alone whatever the gate says: the head learns
      to classify from each stream alone, and the gate gets no gradient from these cases (``f_l - f_g = 0``),
      so it is trained only on real pairs of streams, by which stream the head reads better for the case.
    * ``"mean"``: the stream's training-split mean. The gate ``softmax(W [f_l; f_g])`` is (up to its
      LayerNorm) linear in the features, and its expected logit is the same with the lesion or the global
      stream replaced by its mean (``W_l m_l + W_g E[f_g]`` = ``W_l E[f_l] + W_g m_g``), so a linear gate
      cannot tell the two blanks apart on average; kept for comparison."""
    masks: dict[str, torch.Tensor] = {}
    if p <= 0:
        return inputs, masks
    out = dict(inputs)
    for m, fill in fills.items():
        x = inputs.get(m)
        if not isinstance(x, dict) or "l_pooled" not in x:
            continue
        n = x["l_pooled"].shape[0]
        u = torch.rand(n, generator=generator)
        drop = {"l_": u < p / 2, "g_": (u >= p / 2) & (u < p)}
        x = dict(x)
        for s, rows in drop.items():
            if not rows.any():
                continue
            keep = "g_" if s == "l_" else "l_"
            for k in DUAL_KEYS:
                v = x[s + k].clone()
                v[rows] = fill[s + k].to(v.dtype) if fill else inputs[m][keep + k][rows]
                x[s + k] = v
        out[m] = x
        masks[m] = drop["l_"].long() + 2 * drop["g_"].long()
    return out, masks
