"""Stage 1 for real images: fine-tune the top of the image backbone once per suite, on CPU.

Frozen ImageNet features are far from enough on real dermoscopy, and a full fine-tune of
EfficientNet-Lite0 is ~40 min per epoch on two CPU cores (measured: 10.4 s per batch of 32 at
200 x 150, one thread), so the network is split at block ``cut``:

* the stem and blocks ``0..cut`` stay at their ImageNet weights; their activation maps (and the
  pooled early / middle levels the fusion variants read) are computed once per image and cached;
* blocks ``cut+1..`` and the head convolution are trained with a linear classifier on top, on the
  cached maps, with class-balanced sampling + loss weights and map-level augmentation (horizontal /
  vertical flips and transposition, i.e. the 8 symmetries of the square; on activation maps this
  approximates flipping / rotating the image, exact only for the flips of a symmetric network).

The result is the full encoder state dict: the suite stores it once in ``_shared/`` and every
package's image encoder is that frozen encoder. :func:`prime_feature_cache` writes the fine-tuned
encoder's outputs for a split straight into the stage-2 feature cache, so the whole backbone is
never run again from pixels during the suite.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..case import load_image
from ..data import CohortItem
from ..encoders.image import ImageEncoder
from .dataset import item_fingerprint

logger = logging.getLogger(__name__)

CUT = 10          # last frozen block of EfficientNet-Lite0 (closes the stride-16, 112-channel group)


def frozen_part(enc: ImageEncoder, pixels: torch.Tensor, cut: int = CUT) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stem + blocks 0..cut (default CUT): the activation map after block cut, and the pooled levels 0 and 1
    (level 1 = after block 10, the encoder's middle stage, when ``cut`` is later; else the map's mean)."""
    b = enc.backbone
    x = enc.stem_act(b._bn0(b._conv_stem(pixels)))
    l0 = l1 = None
    for i, block in enumerate(b._blocks[:cut + 1]):
        x = block(x)
        if i == 4:
            l0 = x.mean(dim=(2, 3))
        if i == 10 and cut > 10:
            l1 = x.mean(dim=(2, 3))
    return x, l0, x.mean(dim=(2, 3)) if l1 is None else l1


def trained_part(enc: ImageEncoder, x: torch.Tensor, cut: int = CUT) -> torch.Tensor:
    """Blocks cut+1.. + head convolution: the last feature map (what Grad-CAM's last stage sees)."""
    b = enc.backbone
    n = len(b._blocks)
    for i in range(cut + 1, n):
        x = b._blocks[i](x, drop_connect_rate=enc._drop_rate * i / n)
    return enc.head_act(b._bn1(b._conv_head(x)))


def _items_key(enc: ImageEncoder, items: Sequence[CohortItem], cut: int = CUT) -> str:
    h = hashlib.sha256(json.dumps({"cut": cut, **enc.config()}, sort_keys=True).encode())
    for it in items:   # by content: other cohorts reuse case ids and paths for other images
        h.update(f"{it.case_id}|{item_fingerprint(it, 'image')}".encode())
    return h.hexdigest()[:20]


def encode_frozen(enc: ImageEncoder, items: Sequence[CohortItem], cache_dir: Path, chunk: int = 64,
                  log: Callable[[str], None] = logger.info, what: str = "", cut: int = CUT) -> dict[str, torch.Tensor]:
    """The frozen part's outputs for every item (map in float16), cached on disk by encoder + ids."""
    f = cache_dir / f"frozen-{_items_key(enc, items, cut)}.safetensors"
    if f.is_file():
        return load_file(str(f))
    enc.eval()
    maps, l0s, l1s = [], [], []
    t = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(items), chunk):
            imgs = [load_image(Path(it.image_path)) for it in items[start:start + chunk]]
            x, l0, l1 = frozen_part(enc, enc.prepare(imgs)["pixels"], cut)
            maps.append(x.half())
            l0s.append(l0)
            l1s.append(l1)
            done = min(start + chunk, len(items))
            if done % (chunk * 10) == 0 or done == len(items):
                log(f"  frozen part {what}: {done}/{len(items)} images ({time.perf_counter() - t:.0f} s)")
    out = {"map": torch.cat(maps), "l0": torch.cat(l0s), "l1": torch.cat(l1s)}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in out.items()}, str(tmp))
    tmp.replace(f)
    return out


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips per case and a random transpose per batch (-> all 8 symmetries of the square)."""
    n = x.shape[0]
    hf = torch.rand(n, generator=gen) < 0.5
    vf = torch.rand(n, generator=gen) < 0.5
    x = torch.where(hf.view(-1, 1, 1, 1), x.flip(-1), x)
    x = torch.where(vf.view(-1, 1, 1, 1), x.flip(-2), x)
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.transpose(-1, -2)
    return x


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    rec = [float((pred[y == c] == c).mean()) for c in range(k) if (y == c).any()]
    return float(np.mean(rec))


def tail_logits(enc: ImageEncoder, clf: nn.Module, maps: torch.Tensor, batch: int = 128, cut: int = CUT) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for s in range(0, len(maps), batch):
            out.append(clf(trained_part(enc, maps[s:s + batch].float(), cut).mean(dim=(2, 3))))
    return torch.cat(out)


def finetune_top(enc: ImageEncoder, train: dict[str, torch.Tensor], y_train: torch.Tensor, val: dict[str, torch.Tensor],
                 y_val: torch.Tensor, n_classes: int, epochs: int = 8, samples_per_epoch: int = 3200, batch_size: int = 32,
                 lr: float = 1e-3, backbone_lr: float = 4e-4, weight_decay: float = 1e-4, label_smoothing: float = 0.1,
                 seed: int = 0, threads: int = 2, log: Callable[[str], None] = logger.info, cut: int = CUT,
                 augment: bool = True) -> dict[str, Any]:
    """Train blocks cut+1.. (default CUT) + head conv of ``enc`` in place (best validation balanced accuracy
    kept). ``augment``: the map-level flips / transposition (see the module docstring).
    Sampling share ~ sqrt(class count) and loss weight ~ 1 / sqrt(count): together class-balanced,
    with fewer repeats of the rarest classes than fully balanced sampling."""
    torch.manual_seed(seed)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    b = enc.backbone
    tail = list(b._blocks[cut + 1:]) + [b._conv_head, b._bn1]
    for p in enc.parameters():
        p.requires_grad_(False)
    tail_params = [p for m in tail for p in m.parameters()]
    for p in tail_params:
        p.requires_grad_(True)
    clf = nn.Sequential(nn.Dropout(0.3), nn.Linear(enc.level_dims[2], n_classes))
    counts = torch.bincount(y_train, minlength=n_classes).float().clamp_min(1)
    sample_w = counts.pow(-0.5)[y_train]
    loss_w = counts.pow(-0.5)
    loss_w = loss_w / (loss_w * counts.sqrt()).sum() * counts.sqrt().sum()   # mean weight 1 over sampled cases
    loss_fn = nn.CrossEntropyLoss(weight=loss_w, label_smoothing=label_smoothing)
    opt = torch.optim.AdamW([{"params": tail_params, "lr": backbone_lr}, {"params": clf.parameters(), "lr": lr}],
                            weight_decay=weight_decay)
    steps = epochs * math.ceil(samples_per_epoch / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[backbone_lr, lr], total_steps=steps, pct_start=0.1)
    best, best_state, history = -1.0, None, []
    t0 = time.perf_counter()
    try:
        for epoch in range(epochs):
            for m in tail:
                m.train()
            clf.train()
            idx = torch.multinomial(sample_w, samples_per_epoch, replacement=True, generator=gen)
            tot, n = 0.0, 0
            for s in range(0, samples_per_epoch, batch_size):
                j = idx[s:s + batch_size]
                x = train["map"][j].float()
                if augment:
                    x = _augment(x, gen)
                logits = clf(trained_part(enc, x, cut).mean(dim=(2, 3)))
                loss = loss_fn(logits, y_train[j])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                tot += float(loss.detach()) * len(j)
                n += len(j)
            for m in tail:
                m.eval()
            clf.eval()
            pred = tail_logits(enc, clf, val["map"], cut=cut).argmax(1).numpy()
            bacc = _balanced_accuracy(y_val.numpy(), pred, n_classes)
            history.append({"epoch": epoch + 1, "train_loss": round(tot / n, 4), "val_balanced_accuracy": round(bacc, 4),
                            "seconds": round(time.perf_counter() - t0, 1)})
            log(f"  fine-tune epoch {epoch + 1}/{epochs}: loss {tot / n:.3f}  val bacc {bacc:.3f}  "
                f"({time.perf_counter() - t0:.0f} s)")
            if bacc > best:
                best = bacc
                best_state = {k: v.detach().clone() for k, v in enc.state_dict().items()}
                best_clf = {k: v.detach().clone() for k, v in clf.state_dict().items()}
    finally:
        torch.set_num_threads(old_threads)
    enc.load_state_dict(best_state)
    clf.load_state_dict(best_clf)
    enc.freeze()
    enc.eval()
    return {"cut_after_block": cut, "epochs": epochs, "samples_per_epoch": samples_per_epoch, "batch_size": batch_size,
            "best_val_balanced_accuracy": round(best, 4), "history": history,
            "train_seconds": round(time.perf_counter() - t0, 1), "threads": threads, "classifier": clf}


def full_features(enc: ImageEncoder, frozen: dict[str, torch.Tensor], batch: int = 128, cut: int = CUT) -> dict[str, torch.Tensor]:
    """The fine-tuned encoder's outputs (as ``enc(pixels)`` gives them) from the cached frozen part, in the
    feature-cache layout of :mod:`core.training.dataset`."""
    pooled, toks = [], []
    enc.eval()
    with torch.inference_mode():
        for s in range(0, len(frozen["map"]), batch):
            last = trained_part(enc, frozen["map"][s:s + batch].float(), cut)
            pooled.append(last.mean(dim=(2, 3)))
            if enc.token_grid:
                last = nn.functional.adaptive_avg_pool2d(last, enc.token_grid)
            toks.append(last.flatten(2).transpose(1, 2).contiguous())
    pooled_t, tokens = torch.cat(pooled), torch.cat(toks)
    return {"pooled": pooled_t, "l0": frozen["l0"].float(), "l1": frozen["l1"].float(), "l2": pooled_t.clone(), "tokens": tokens,
            "mask": torch.ones(tokens.shape[:2], dtype=torch.bool)}


def prime_feature_cache(enc: ImageEncoder, items: Sequence[CohortItem], tag: str, feats: dict[str, torch.Tensor]) -> Path:
    """Write ``feats`` where :func:`core.training.dataset.build_split` looks for this encoder's outputs on
    ``items`` (same key), so stage 2 reads them instead of running the backbone again."""
    from .dataset import _encoder_cache_key, cache_root

    f = cache_root() / "features" / f"image-{_encoder_cache_key(enc, items, tag)}.safetensors"
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in feats.items()}, str(tmp))
    tmp.replace(f)
    return f
