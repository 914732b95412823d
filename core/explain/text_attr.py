"""Word-level attributions of a note by removing words (issue #15 §2): the alternative to integrated gradients.

A word is *absent* when its word pieces are masked out of the encoder's attention and out of its mean pooling
(the other tokens keep their positions): the note as if the word had not been written, with no made-up
replacement token. Both methods explain the calibrated target logit of the whole fused model, the other
modalities held at the case's (:class:`ExplainContext`), and return words in the form of
:func:`core.explain.attributions.note_attributions` (``start`` / ``end`` / ``text`` / ``score``):

* :func:`note_word_occlusion` -- leave one word out: score = f(note) - f(note without the word). One forward
  pass per word. It misses words that are redundant with each other (removing one of two synonyms moves little).
* :func:`note_word_shapley` -- Shapley values of the words by permutation sampling (Strumbelj & Kononenko
  2010; what Captum's ``ShapleyValueSampling`` does, with a word-removal "baseline"), permutations drawn in
  antithetic pairs (a permutation and its reverse) from a private seeded generator. The scores add up to
  f(note) - f(no words) exactly (each permutation's steps telescope); ``n_samples`` permutations cost
  ``n_samples`` x (words) forward passes.

Why this exists: on the note-only known-answer control, IG on the word embeddings (pad, [UNK], [MASK] or zero
baselines, several layers, a token-presence path) puts about half of its mass on the planted words (the chance
level is ~0.32), while removing the planted sentences moves the logit six times more than removing every decoy
sentence (see core/explain/controls.py, :data:`NOTE_METHODS`).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .context import ExplainContext


def note_words(enc: Any, note: str) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """(ids [1, L], word index per token [L] (-1 for special tokens), words [{word_id, start, end, text}]) of
    the note as the encoder tokenises it (truncated at its ``max_length``)."""
    tok = enc.tokenizer(note, truncation=True, max_length=enc.max_length, return_offsets_mapping=True, return_tensors="pt")
    ids = tok["input_ids"]
    offsets = tok["offset_mapping"][0].tolist()
    group = torch.full((ids.shape[1],), -1, dtype=torch.long)
    words: list[dict[str, Any]] = []
    for i, w in enumerate(tok.word_ids(0)):
        if w is None:
            continue
        s, e = offsets[i]
        if words and words[-1]["word_id"] == w:
            words[-1]["end"] = e
        else:
            words.append({"word_id": w, "start": s, "end": e})
        group[i] = len(words) - 1
    for wd in words:
        wd["text"] = note[wd["start"]:wd["end"]]
    return ids, group, words


def presence_fn(ctx: ExplainContext, ids: torch.Tensor, group: torch.Tensor, chunk: int = 64
                ) -> Callable[[torch.Tensor], torch.Tensor]:
    """f(present [n, W] bool) -> [n] calibrated target logit of the note with only the present words (special
    tokens always present), evaluated ``chunk`` rows at a time without gradients."""
    special = group < 0
    idx = group.clamp_min(0)

    def f(present: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, present.shape[0], chunk):
                p = present[i:i + chunk]
                mask = (p[:, idx] | special).long()
                out.append(ctx.calibrated_logits("note", {"input_ids": ids.expand(p.shape[0], -1), "attention_mask": mask})[:, ctx.target])
        return torch.cat(out)
    return f


def _scored(words: list[dict[str, Any]], scores: torch.Tensor) -> list[dict[str, Any]]:
    return [{**w, "score": float(s)} for w, s in zip(words, scores.tolist())]


def note_word_occlusion(ctx: ExplainContext) -> dict[str, Any]:
    """Leave-one-word-out: each word's score is the drop of the target logit when it alone is removed."""
    enc = ctx.model.encoders["note"]
    ids, group, words = note_words(enc, ctx.case.note or "")
    n = len(words)
    if n == 0:
        return {"words": [], "method": "word occlusion", "n_forward": 0}
    f = presence_fn(ctx, ids, group)
    present = torch.ones(n + 1, n, dtype=torch.bool)
    present[torch.arange(1, n + 1), torch.arange(n)] = False
    v = f(present)
    return {"words": _scored(words, v[0] - v[1:]), "method": "word occlusion", "n_forward": n + 1,
            "truncated": ids.shape[1] >= enc.max_length}


def note_word_shapley(ctx: ExplainContext, n_samples: int = 4, seed: int = 0) -> dict[str, Any]:
    """Shapley values of the note's words by antithetic permutation sampling (``n_samples`` permutations, rounded
    up to an even number). ``total`` = f(note) - f(no words), which the scores sum to."""
    enc = ctx.model.encoders["note"]
    ids, group, words = note_words(enc, ctx.case.note or "")
    n = len(words)
    if n == 0:
        return {"words": [], "method": "word Shapley sampling", "n_samples": 0, "n_forward": 0}
    gen = torch.Generator().manual_seed(seed)
    perms = []
    for _ in range((max(n_samples, 2) + 1) // 2):
        p = torch.randperm(n, generator=gen)
        perms += [p, p.flip(0)]
    # row 0: no word; then for each permutation the words added one by one
    rows = [torch.zeros(n, dtype=torch.bool)]
    for p in perms:
        cur = torch.zeros(n, dtype=torch.bool)
        for k in p.tolist():
            cur = cur.clone()
            cur[k] = True
            rows.append(cur)
    f = presence_fn(ctx, ids, group)
    v = f(torch.stack(rows))
    empty = v[0]
    scores = torch.zeros(n)
    for j, p in enumerate(perms):
        seq = torch.cat([empty.view(1), v[1 + j * n:1 + (j + 1) * n]])
        scores[p] += seq[1:] - seq[:-1]
    scores /= len(perms)
    return {"words": _scored(words, scores), "method": "word Shapley sampling", "n_samples": len(perms),
            "n_forward": 1 + len(perms) * n, "total": float(v[-1] - empty), "truncated": ids.shape[1] >= enc.max_length}


def note_ig_token_baseline(ctx: ExplainContext, token: str = "unk", n_steps: int = 24) -> dict[str, Any]:
    """Integrated gradients on the word embeddings like :func:`core.explain.attributions.note_attributions`, from a
    baseline that puts ``token`` (``"unk"``, the product's default since session 10, ``"mask"`` or ``"pad"``, the
    default before) at every non-special position; word pieces summed per word. Computed here on its own (the baseline's
    row in the steps' batch through the whole model, no cached baseline pass), apart from the product's code path."""
    from .attributions import ig_with_delta, merge_word_pieces, note_ig_inputs

    enc = ctx.model.encoders["note"]
    note = ctx.case.note or ""
    tok, ids, mask, emb, _ = note_ig_inputs(enc, note)
    special = tok["special_tokens_mask"][0].bool()
    tid = {"unk": enc.tokenizer.unk_token_id, "mask": enc.tokenizer.mask_token_id, "pad": enc.pad_token_id}[token]
    with torch.no_grad():
        base = enc.embedding_layer(torch.where(special, ids[0], torch.full_like(ids[0], int(tid))).unsqueeze(0))
    f = ctx.target_fn("note", "inputs_embeds", attention_mask=mask)
    attr, delta = ig_with_delta(f, emb, base, n_steps, ctx.target_logit, n_steps)
    scores = attr.sum(-1)[0].detach().numpy()
    words = merge_word_pieces(note, tok.word_ids(0), tok["offset_mapping"][0].tolist(), scores)
    return {"words": words, "method": f"integrated gradients, [{token.upper()}] baseline", "n_steps": n_steps,
            "relative_delta": float(delta.abs().max()) / max(abs(float(scores.sum())), 1e-6)}


def _product_ig(ctx: ExplainContext, steps: int, baseline: str | None = None) -> list[dict[str, Any]]:
    from .attributions import note_attributions

    return note_attributions(ctx, n_steps=steps, internal_batch_size=steps, baseline=baseline)["words"]


#: note word attributions ``cohort_faithfulness(note_method=...)`` can measure: name -> f(ctx, ig_steps) -> words.
#: ``ig``: the product's note IG with its default baseline (core.explain.attributions.NOTE_BASELINE); ``ig_pad``:
#: the product's code from the [PAD] baseline; ``ig_unk``: this module's own [UNK]-baseline IG (the measured
#: alternative, independent of the product's code path).
NOTE_METHODS: dict[str, Callable[[ExplainContext, int], list[dict[str, Any]]]] = {
    "ig": lambda ctx, steps: _product_ig(ctx, steps),
    "ig_pad": lambda ctx, steps: _product_ig(ctx, steps, "pad"),
    "ig_unk": lambda ctx, steps: note_ig_token_baseline(ctx, "unk", steps)["words"],
    "word_occlusion": lambda ctx, steps: note_word_occlusion(ctx)["words"],
    "word_shapley": lambda ctx, steps: note_word_shapley(ctx)["words"],
}


def note_words_attribution(ctx: ExplainContext, method: str = "ig", ig_steps: int = 24) -> list[dict[str, Any]]:
    """The note's words with ``method``'s scores (a key of :data:`NOTE_METHODS`)."""
    if method not in NOTE_METHODS:
        raise ValueError(f"unknown note method {method!r}; choose one of: {', '.join(NOTE_METHODS)}.")
    return NOTE_METHODS[method](ctx, ig_steps)


__all__ = ["note_words", "presence_fn", "note_word_occlusion", "note_word_shapley", "note_ig_token_baseline",
           "NOTE_METHODS", "note_words_attribution"]
