"""Captum attributions per modality, each through the whole fused model with the rest held fixed.

* note     integrated gradients on the word embeddings (what LayerIntegratedGradients on the embedding
           layer computes, without hooking it; baseline: :data:`NOTE_BASELINE`'s token at every non-special
           position, special tokens kept), Gauss-Legendre
           steps batched with ``internal_batch_size``, over the note's real token length; word
           pieces merged back to the words of the note; the convergence delta is reported.
* table    IntegratedGradients and ShapleyValueSampling per feature (one-hot groups share a feature
           mask), baseline = training means / most frequent categories.
* spectrum IntegratedGradients per wavelength, baseline = the training mean spectrum, optional
           moving-average smoothing.
* image    IntegratedGradients and Occlusion, alternatives to Grad-CAM.
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import torch

# captum (which pulls in matplotlib) is imported where it is used: a cohort engine's Ray actor that never
# asks for these parts does not pay for it

from ..encoders import ModalityFeatures
from .context import ExplainContext


def merge_word_pieces(note: str, word_ids: Sequence[int | None], offsets: Sequence[Sequence[int]],
                      scores: Sequence[float]) -> list[dict[str, Any]]:
    """Word-piece scores -> one score per word (summed), with the word's character span and text."""
    words: list[dict[str, Any]] = []
    for i, w in enumerate(word_ids):
        if w is None:
            continue
        s, e = offsets[i]
        if words and words[-1]["word_id"] == w:
            words[-1]["score"] += float(scores[i])
            words[-1]["end"] = e
        else:
            words.append({"word_id": w, "start": s, "end": e, "score": float(scores[i])})
    for wd in words:
        wd["text"] = note[wd["start"]:wd["end"]]
    return words


#: the note IG baseline's token at every non-special position (special tokens are kept): ``"unk"`` (the default
#: since session 10) or ``"pad"`` (the default before). Chosen by the rule in
#: assets/models/dermatology/note_baseline_choice.md, written before measuring, on fresh seed 9308 (note-only
#: known-answer control, 70 cases, true class, 24 steps; controls_9308_note.json): IG mass on the planted words
#: [UNK] 0.61 vs [PAD] 0.57 (chance 0.32; randomised copy 0.33 / 0.33; criterion >= 0.6), same cost (1.00x on the
#: shipped mmtm). A plausible reason (not measured): [PAD] is always masked out in pre-training, so an all-pad note
#: is a point the encoder never saw; [UNK] is a word it does not know.
NOTE_BASELINES = ("unk", "pad")
NOTE_BASELINE = "unk"


def note_baseline_ids(enc: Any, ids: torch.Tensor, special: torch.Tensor, baseline: str | None = None) -> torch.Tensor:
    """The IG baseline's token ids for the note's ``ids`` ([L] or [1, L]): the special tokens kept (``special``: the
    tokenizer's special-tokens mask, same shape), ``baseline``'s token ([PAD] or [UNK]; None: :data:`NOTE_BASELINE`)
    everywhere else."""
    baseline = NOTE_BASELINE if baseline is None else baseline
    if baseline not in NOTE_BASELINES:
        raise ValueError(f"unknown note baseline {baseline!r}; choose one of: {', '.join(NOTE_BASELINES)}.")
    tid = enc.pad_token_id if baseline == "pad" else int(enc.tokenizer.unk_token_id)
    return torch.where(special.bool(), ids, torch.full_like(ids, int(tid)))


def note_ig_inputs(enc: Any, note: str, baseline: str | None = None
                   ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One note's IG inputs: (tokenizer output with offsets, ids [1, L], attention mask [1, L], word
    embeddings [1, L, E], baseline embeddings [1, L, E]). The baseline keeps the special tokens and puts
    ``baseline``'s token (None: :data:`NOTE_BASELINE`) everywhere else (:func:`note_baseline_ids`); shared by the
    per-case explainer and the cohort engine."""
    tok = enc.tokenizer(note, truncation=True, max_length=enc.max_length, return_offsets_mapping=True,
                        return_special_tokens_mask=True, return_tensors="pt")
    ids, mask = tok["input_ids"], tok["attention_mask"]
    base_ids = note_baseline_ids(enc, ids, tok["special_tokens_mask"], baseline)
    with torch.no_grad():
        emb, base_emb = enc.embedding_layer(ids), enc.embedding_layer(base_ids)
    return tok, ids, mask, emb, base_emb


def gauss_legendre(n_steps: int) -> tuple[torch.Tensor, list[float]]:
    """Captum's Gauss-Legendre IG step sizes and alphas (``approximation_methods.gauss_legendre_builders``):
    numpy's nodes and weights on [-1, 1], rescaled to [0, 1]."""
    x, w = np.polynomial.legendre.leggauss(n_steps)
    return torch.tensor((0.5 * w).tolist()).float(), (0.5 * (1 + x)).tolist()


def integrated_gradients(f, x: torch.Tensor, baseline: torch.Tensor, n_steps: int, f_x: torch.Tensor,
                         steps_and_baseline=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrated gradients of ``f`` ([n, ...] -> [n]) at one input ``x`` [1, ...] from ``baseline`` [1, ...]
    with Gauss-Legendre steps: what Captum's ``IntegratedGradients(f).attribute(x, baseline, n_steps,
    method="gausslegendre", internal_batch_size=n_steps, return_convergence_delta=True)`` computes, in one
    forward + backward pass instead of three passes: the baseline's value rides in the steps' batch (its row
    gets no gradient) and ``f_x`` = f(x) is the value the case's context already holds. -> (attributions
    [1, ...], convergence delta [1]).

    ``steps_and_baseline(steps)`` -> [n_steps + 1], where given, replaces ``f(cat(steps, baseline))``: the
    steps' values and then the baseline's, for a caller that gets the baseline's row more cheaply than by
    running it through ``f`` with the steps (e.g. part of it is a constant of the model)."""
    step_sizes, alphas = gauss_legendre(n_steps)
    with torch.enable_grad():
        if steps_and_baseline is None:
            scaled = torch.cat([baseline + a * (x - baseline) for a in alphas] + [baseline], 0).requires_grad_()
            out = f(scaled)
        else:
            scaled = torch.cat([baseline + a * (x - baseline) for a in alphas], 0).requires_grad_()
            out = steps_and_baseline(scaled)
        grads = torch.autograd.grad(torch.unbind(out[:n_steps]), scaled)[0][:n_steps]
    scaled_grads = grads.contiguous().view(n_steps, -1) * step_sizes.view(n_steps, 1)
    attr = torch.sum(scaled_grads.reshape((n_steps, 1) + tuple(x.shape[1:])), dim=0) * (x - baseline)
    return attr, attr.reshape(1, -1).sum(1) - (f_x.reshape(1) - out[n_steps:].detach())


def ig_with_delta(f, x: torch.Tensor, baseline: torch.Tensor, n_steps: int, f_x, internal_batch_size: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(attributions, convergence delta): all steps in one batch by :func:`integrated_gradients` (``f_x()``
    gives f at ``x``, already known to the caller) when ``internal_batch_size >= n_steps``, else Captum's
    ``IntegratedGradients`` in chunks of ``internal_batch_size`` (imported here, so a process that never
    chunks never imports captum)."""
    if internal_batch_size >= n_steps:
        return integrated_gradients(f, x, baseline, n_steps, f_x())
    from captum.attr import IntegratedGradients

    with torch.enable_grad():
        return IntegratedGradients(f).attribute(x, baselines=baseline, n_steps=n_steps, method="gausslegendre",
                                                internal_batch_size=internal_batch_size, return_convergence_delta=True)


def cat_features(*feats: ModalityFeatures) -> ModalityFeatures:
    """Encoder outputs of several batches as one batch (rows in order)."""
    cat = lambda ts: torch.cat(list(ts), 0)  # noqa: E731
    extras = None if not feats[0].extras else {k: cat(f.extras[k] for f in feats) for k in feats[0].extras}
    return ModalityFeatures(cat(f.pooled for f in feats), tuple(cat(f.levels[i] for f in feats) for i in range(3)),
                            cat(f.tokens for f in feats), cat(f.token_mask for f in feats), extras)


# The note's baseline (special tokens kept, [PAD] or [UNK] everywhere else) depends on the note's length only, and
# so does the text encoder's output for it: kept per encoder, keyed by the baseline's tokens, its mask and the
# encoder's weights (storage + version, as the image IG's black image), instead of one encoder pass per
# explanation. A few lengths are kept per encoder (a note has at most ``max_length`` tokens).
_NOTE_BASELINE: "weakref.WeakKeyDictionary[torch.nn.Module, OrderedDict[tuple, tuple[torch.Tensor, ModalityFeatures]]]" = \
    weakref.WeakKeyDictionary()
_NOTE_BASELINE_LOCK = threading.Lock()
_NOTE_BASELINE_KEEP = 16


def baseline_note_features(enc: Any, base_ids: torch.Tensor, base_emb: torch.Tensor, mask: torch.Tensor) -> ModalityFeatures:
    """``enc(inputs_embeds=base_emb, attention_mask=mask)`` without a graph, where ``base_emb`` is the word
    embedding of the baseline whose token ids are ``base_ids`` (:func:`note_ig_inputs`): computed once
    per (encoder weights, baseline, mask) and kept. An encoder in training mode or with hooks runs every time."""
    from ..encoders.onednn import weights_key

    hooked = any(m._forward_hooks or m._forward_pre_hooks for m in enc.modules())
    if enc.training or hooked:
        with torch.no_grad():
            return enc(inputs_embeds=base_emb, attention_mask=mask)
    key = (tuple(base_ids.reshape(-1).tolist()), tuple(mask.reshape(-1).tolist()), base_emb.dtype,
           weights_key(list(enc.parameters()), list(enc.buffers())))
    with _NOTE_BASELINE_LOCK:
        hit = _NOTE_BASELINE.get(enc, {}).get(key)
    if hit is not None and torch.equal(hit[0], base_emb):
        return hit[1]
    with torch.no_grad():
        out = enc(inputs_embeds=base_emb, attention_mask=mask)
    with _NOTE_BASELINE_LOCK:
        kept = _NOTE_BASELINE.setdefault(enc, OrderedDict())
        kept[key] = (base_emb.detach().clone(), out)
        while len(kept) > _NOTE_BASELINE_KEEP:
            kept.popitem(last=False)
    return out


def note_attributions(ctx: ExplainContext, n_steps: int = 24, internal_batch_size: int = 24,
                      baseline: str | None = None) -> dict[str, Any]:
    """Integrated gradients of the target logit on the note's word embeddings from ``baseline``'s note (None:
    :data:`NOTE_BASELINE`; special tokens kept), word pieces summed per word."""
    enc = ctx.model.encoders["note"]
    note = ctx.case.note or ""
    baseline = NOTE_BASELINE if baseline is None else baseline
    # Integrated gradients on the word embeddings, the same quantity LayerIntegratedGradients on the
    # embedding layer computes, but with no hook: the shared encoder is used as it is (no private copy).
    tok, ids, mask, emb, base_emb = note_ig_inputs(enc, note, baseline)
    f = ctx.target_fn("note", "inputs_embeds", attention_mask=mask)
    if internal_batch_size >= n_steps:
        base_ids = note_baseline_ids(enc, ids, tok["special_tokens_mask"], baseline)
        # the baseline note needs its value, not its gradient: it runs through the text encoder on its own
        # without a graph, and joins the steps' rows at the fusion (one row fewer through the encoder's backward)
        def steps_and_baseline(steps: torch.Tensor) -> torch.Tensor:
            b = baseline_note_features(enc, base_ids, base_emb, mask)
            s = enc(inputs_embeds=steps, attention_mask=mask.expand(len(steps), -1))
            return ctx.calibrated_logits("note", cat_features(s, b))[:, ctx.target]

        attr, delta = integrated_gradients(f, emb, base_emb, n_steps, ctx.target_logit(), steps_and_baseline)
    else:
        attr, delta = ig_with_delta(f, emb, base_emb, n_steps, ctx.target_logit, internal_batch_size)
    token_scores = attr.sum(-1)[0].detach().numpy()
    tokens = enc.tokenizer.convert_ids_to_tokens(ids[0])
    offsets = tok["offset_mapping"][0].tolist()
    word_ids = tok.word_ids(0)
    words = merge_word_pieces(note, word_ids, offsets, token_scores)
    total = float(token_scores.sum())
    return {"words": words, "tokens": tokens, "token_scores": token_scores.tolist(),
            "convergence_delta": float(delta.abs().max()), "relative_delta": float(delta.abs().max()) / max(abs(total), 1e-6),
            "n_steps": n_steps, "n_tokens": int(ids.shape[1]), "truncated": len(word_ids) >= enc.max_length,
            "baseline": baseline}


def shapley_sampling(f, x: torch.Tensor, baseline: torch.Tensor, group: torch.Tensor, n_samples: int, seed: int = 0,
                     chunk: int = 256) -> torch.Tensor:
    """What Captum's ShapleyValueSampling(f).attribute(x, baselines=baseline, feature_mask=group, n_samples=n_samples)
    computes with its permutations drawn from a private ``torch.Generator`` seeded ``seed`` (Captum's own draw from
    the process-wide generator, which concurrent requests share), with every
    perturbed input of every permutation evaluated in one batched pass (``chunk`` rows at a time) instead of one
    pass per permutation: the same permutations, the same perturbed inputs and the same arithmetic of the
    differences. ``x``, ``baseline``: [1, D]; ``group``: [1, D] feature ids 0..F-1. -> [1, D] float."""
    n_features = int(group.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(n_features, generator=gen).tolist() for _ in range(n_samples)]
    masks = [group == k for k in range(n_features)]
    rows = [baseline]
    for perm in perms:  # Captum's _update_current_tensors: the features added one by one in permutation order
        cur = baseline
        for k in perm:
            cur = cur * (~masks[k]).to(cur.dtype) + x * masks[k].to(x.dtype)
            rows.append(cur)
    batch = torch.cat(rows)
    with torch.no_grad():
        evals = torch.cat([f(batch[i:i + chunk]).reshape(-1) for i in range(0, len(batch), chunk)])
    initial = evals[:1]
    total = torch.zeros((1,) + tuple(x.shape[1:]), dtype=torch.float)
    lead = (-1, 1) + (x.dim() - 1) * (1,)
    for s, perm in enumerate(perms):
        all_eval = torch.cat((initial, evals[1 + s * n_features:1 + (s + 1) * n_features]))
        diff = all_eval[1:] - all_eval[:-1]
        total += (diff.reshape(lead) * torch.cat([masks[k].unsqueeze(0) for k in perm]).float()).sum(dim=0)
    return total / n_samples


def table_attributions(ctx: ExplainContext, n_steps: int = 32, shapley_samples: int = 40, seed: int = 0) -> dict[str, Any]:
    enc = ctx.model.encoders["metadata"]
    schema = enc.schema
    x = ctx.inputs["metadata"]["values"]
    base = torch.tensor([schema.baseline_row()], dtype=x.dtype)
    f = ctx.target_fn("metadata", "values")
    ig, delta = integrated_gradients(f, x, base, n_steps, ctx.target_logit())
    group = torch.zeros_like(x, dtype=torch.long)
    for i, s in enumerate(schema.slices):
        group[0, s] = i
    sv = torch.full_like(x, float("nan"))
    if shapley_samples > 0:  # 0: integrated gradients only
        sv = shapley_sampling(f, x, base, group, shapley_samples, seed)
    values, _ = schema.validate(ctx.case.metadata or {})
    rows = []
    for feat, s in zip(schema.features, schema.slices):
        rows.append({"name": feat.name, "unit": feat.unit, "value": values.get(feat.name), "baseline": feat.baseline,
                     "integrated_gradients": float(ig[0, s].sum()),
                     "shapley": None if shapley_samples <= 0 else float(sv[0, s][0])})
    return {"features": rows, "convergence_delta": float(delta.abs().max()), "n_steps": n_steps,
            "shapley_samples": shapley_samples}


def spectrum_attributions(ctx: ExplainContext, n_steps: int = 32, smooth: int = 9) -> dict[str, Any]:
    enc = ctx.model.encoders["spectrum"]
    x = ctx.inputs["spectrum"]["spectrum"]
    base = enc.mean.unsqueeze(0).to(x.dtype)
    f = ctx.target_fn("spectrum", "spectrum")
    attr, delta = integrated_gradients(f, x, base, n_steps, ctx.target_logit())
    a = attr[0].detach().numpy()
    smoothed = np.convolve(a, np.ones(smooth) / smooth, mode="same") if smooth and smooth > 1 else a
    return {"wavelengths": [float(w) for w in enc.grid], "attributions": a.tolist(), "smoothed": smoothed.tolist(),
            "spectrum": x[0].tolist(), "convergence_delta": float(delta.abs().max()), "n_steps": n_steps}


def image_attributions(ctx: ExplainContext, method: str = "integrated_gradients", n_steps: int = 16,
                       window: int = 32, stride: int = 16) -> np.ndarray:
    """[S, S] non-negative map: |IG| summed over colour channels (baseline: a black image), or the
    drop in the target logit when a window is occluded."""
    x = ctx.inputs["image"]["pixels"]
    enc = ctx.pixel_encoder
    black = (torch.zeros_like(x) - enc._mean.cpu()) / enc._std.cpu()
    f = ctx.target_fn("image", "pixels", **ctx.image_fixed())
    from captum.attr import IntegratedGradients, Occlusion

    if method == "integrated_gradients":
        with torch.enable_grad():
            attr = IntegratedGradients(f).attribute(x, baselines=black, n_steps=n_steps, method="gausslegendre",
                                                    internal_batch_size=8)
        m = attr[0].abs().sum(0)
    elif method == "occlusion":
        with torch.no_grad():
            attr = Occlusion(f).attribute(x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                          baselines=0.0, perturbations_per_eval=32)
        m = attr[0].mean(0).clamp_min(0)
    else:
        raise ValueError("image attribution method must be 'integrated_gradients' or 'occlusion'.")
    m = m.detach().numpy()
    return (m / max(float(m.max()), 1e-12)).astype(np.float32)
