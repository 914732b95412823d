"""Issue 15 §3: ``train.stream_dropout`` gives the dual-expert gate a reason to move. During training it
blanks a case's lesion or global stream (the blank shows the kept stream's features, so the case has one
source), off by default and recorded in the package's training config."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.encoders import build_encoder
from core.model import MultimodalClassifier
from core.training.config import ConfigError, TrainerOptions, TrainOptions, config_from_dict
from core.training.dataset import SplitTensors, stream_dropout, stream_fills
from core.training.train import fit

from tiny import LABELS

N_CLASSES = len(LABELS)
DUAL = {"type": "dual_expert", "arch": "tiny", "pretrained": False, "image_size": 32}
LEAK = 0.3   # how much of the other kind's class signal each stream also carries (the crop shows some ring)


def synthetic_split(n: int, seed: int) -> tuple[SplitTensors, torch.Tensor]:
    """Cached dual-expert streams (the tiny backbone's shapes): the lesion stream carries the class on the
    even ("lesion-decided") cases, the global stream on the odd ("context-decided") ones; each stream also
    carries a weak (``LEAK``) class signal of its own on the other half. Returns the split and the
    lesion-decided mask."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(2, 2, N_CLASSES, 32, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    lesion_decided = torch.arange(n) % 2 == 0
    d = {}
    for j, s in enumerate(("l_", "g_")):
        own = (lesion_decided if s == "l_" else ~lesion_decided).float().unsqueeze(-1)
        pooled = torch.relu(torch.randn(n, 32, generator=g) * 0.5 + 1.0) + torch.relu(protos[j, 0, y]) * own \
            + LEAK * torch.relu(protos[j, 1, y]) * (1 - own)
        d.update({f"{s}pooled": pooled, f"{s}l0": pooled[:, :8], f"{s}l1": pooled[:, :16], f"{s}l2": pooled,
                  f"{s}tokens": pooled.unsqueeze(1) + 0.1 * torch.randn(n, 16, 32, generator=g)})
    split = SplitTensors([f"s{seed}-{i}" for i in range(n)], ["image"], y, torch.ones(n, 1, dtype=torch.bool), {},
                         {"image": d}, {}, {"image": torch.arange(n)})
    return split, lesion_decided


def dual_only_model(gate: str = "learned", committed: float = 0.0) -> MultimodalClassifier:
    """The tiny dual expert alone; ``committed``: the learned gate's initial logit gap towards the lesion
    stream (the shipped dermatology gate sits at w_l = 1.00 on every case)."""
    torch.manual_seed(0)
    enc = build_encoder("image", {**DUAL, "gate": gate, "n_classes": N_CLASSES if gate == "entropy" else None})
    if committed:
        with torch.no_grad():
            enc.gate[1].bias.copy_(torch.tensor([committed, -committed]))
    return MultimodalClassifier({"image": enc}, N_CLASSES, "unimodal", {}, 32,
                                {"hidden": 32, "blocks": 1, "dropout": 0.1})


def train(model, tmp_path: Path, p: float, epochs: int = 10, n: int = 1200, **extra):
    tr, _ = synthetic_split(n, 0)
    va, _ = synthetic_split(300, 1)
    opts = TrainOptions(epochs=epochs, batch_size=64, lr=3e-3, patience=epochs, seed=0, modality_dropout=0.0,
                        stream_dropout=p, **extra)
    model, _ = fit(model, tr, va, opts, TrainerOptions(accelerator="cpu", progress_bar=False), tmp_path / f"p{p}")
    return model


def gate_and_accuracy(model: MultimodalClassifier) -> tuple[float, float, float]:
    te, lesion_decided = synthetic_split(600, 2)
    model.eval()
    with torch.no_grad():
        b = te.batch(model, torch.arange(len(te)))
        out = model(b["inputs"], b["present"])
    w = out.features[0].extras["lesion_gate"]
    acc = float((out.logits.argmax(-1) == te.labels).float().mean())
    return float(w[lesion_decided].mean()), float(w[~lesion_decided].mean()), acc


def test_blanking_copies_the_kept_stream_never_both_and_leaves_the_split_alone():
    split, _ = synthetic_split(400, 3)
    model = dual_only_model()
    inputs = split.batch(model, torch.arange(400))["inputs"]
    before = {k: v.clone() for k, v in inputs["image"].items()}
    out, masks = stream_dropout(inputs, stream_fills(model, split), 0.5, torch.Generator().manual_seed(0))
    x = out["image"]
    same = torch.isclose(x["l_pooled"], x["g_pooled"]).all(-1)
    lesion_gone, global_gone = masks["image"] == 1, masks["image"] == 2
    assert torch.equal(same, lesion_gone | global_gone)
    assert 0.18 < lesion_gone.float().mean() < 0.32 and 0.18 < global_gone.float().mean() < 0.32
    for k in ("pooled", "l0", "l1", "l2", "tokens"):
        assert torch.equal(x[f"l_{k}"][lesion_gone], before[f"g_{k}"][lesion_gone])      # lesion shows global
        assert torch.equal(x[f"g_{k}"][global_gone], before[f"l_{k}"][global_gone])      # global shows lesion
        kept = ~same
        assert torch.equal(x[f"l_{k}"][kept], before[f"l_{k}"][kept])
        assert torch.equal(x[f"g_{k}"][kept], before[f"g_{k}"][kept])
        assert torch.equal(inputs["image"][f"l_{k}"], before[f"l_{k}"])                 # the split untouched
    mean_fill = stream_fills(model, split, "mean")["image"]
    out, masks = stream_dropout(inputs, {"image": mean_fill}, 0.5, torch.Generator().manual_seed(0))
    assert torch.allclose(out["image"]["l_pooled"][masks["image"] == 1], split.prepared["image"]["l_pooled"].mean(0))
    assert stream_dropout(inputs, stream_fills(model, split), 0.0)[0] is inputs             # off: untouched


def test_option_is_validated_recorded_and_needs_a_dual_expert(tmp_path):
    base = {"name": "x", "variant": "gated", "modalities": ["image"], "out": "o", "data": {"cohort": "dermatology"}}
    assert config_from_dict(base).train.stream_dropout == 0.0                                 # off by default
    cfg = config_from_dict({**base, "train": {"stream_dropout": 0.4, "stream_dropout_fill": "mean"}})
    assert cfg.to_dict()["train"]["stream_dropout"] == 0.4                # what the package's train_config records
    assert cfg.to_dict()["train"]["stream_dropout_fill"] == "mean"
    for bad in ({"stream_dropout": 1.0}, {"stream_dropout": -0.1}, {"stream_dropout_fill": "zeros"}):
        with pytest.raises(ConfigError, match="stream_dropout"):
            config_from_dict({**base, "train": bad})
    from tiny import make_model
    from test_mechanisms import synthetic_split as plain_split

    plain, _ = plain_split(64, 0)
    with pytest.raises(ValueError, match="stream_dropout"):
        stream_fills(make_model("concat", ("image", "note")), plain)


def test_the_option_changes_training(tmp_path):
    a = train(dual_only_model(), tmp_path / "a", 0.0, epochs=2, n=256)
    b = train(dual_only_model(), tmp_path / "b", 0.5, epochs=2, n=256)
    gate_a, gate_b = a.encoders["image"].gate[1].weight, b.encoders["image"].gate[1].weight
    assert not torch.allclose(gate_a, gate_b, atol=1e-4)


def test_a_gate_committed_to_the_lesion_learns_to_follow_the_evidence_only_with_stream_dropout(tmp_path):
    """Half the cases are decided by the lesion stream, half by the global one; the gate starts where the
    shipped one ended (w_l ~ 1 on every case). Without the option the head never learns to read the
    global stream alone, so moving the gate towards it does not pay; with it, it does."""
    les0, ctx0, acc0 = gate_and_accuracy(train(dual_only_model(committed=4.0), tmp_path, 0.0))
    les1, ctx1, acc1 = gate_and_accuracy(train(dual_only_model(committed=4.0), tmp_path, 0.5))
    assert les1 - ctx1 > 0.5, (les1, ctx1)
    assert (les1 - ctx1) - (les0 - ctx0) > 0.2, (les0, ctx0, les1, ctx1)
    assert acc1 >= acc0 - 0.02


def test_lesion_gate_balance_counts_only_real_pairs_of_streams():
    from types import SimpleNamespace

    from core.training.module import lesion_gate_balance

    def out(w):
        return SimpleNamespace(features=[SimpleNamespace(extras={"lesion_gate": torch.tensor(w)})])

    assert float(lesion_gate_balance(out([1.0, 1.0, 1.0, 1.0]), {}, ["image"])) == pytest.approx(1.0)   # one stream
    assert float(lesion_gate_balance(out([1.0, 0.0, 1.0, 0.0]), {}, ["image"])) == pytest.approx(0.0)   # both used
    nan = float("nan")
    # the absent image (NaN) and the blanked cases (1: lesion, 2: global) are left out
    assert float(lesion_gate_balance(out([1.0, nan, 0.0, 1.0, 1.0]), {"image": torch.tensor([0, 1, 2, 0])},
                                     ["image"])) == pytest.approx(1.0)
    assert float(lesion_gate_balance(SimpleNamespace(features=[SimpleNamespace(extras=None)]), {}, ["image"])) == 0.0


def test_stream_gate_balance_needs_a_dual_expert_image_encoder():
    """train.stream_gate_balance > 0 on a model without a dual-expert image encoder would add nothing to the loss
    (no lesion gate): LitClassifier says so instead of training as if it were on; a dual expert takes it."""
    from core.training.module import LitClassifier
    from test_mechanisms import synthetic_split as plain_split
    from tiny import make_model

    plain, _ = plain_split(64, 0)
    counts = [1] * N_CLASSES
    with pytest.raises(ValueError, match="stream_gate_balance .*dual-expert image encoder"):
        LitClassifier(make_model("concat", ("image", "note")), TrainOptions(stream_gate_balance=0.1), plain, plain, counts)
    LitClassifier(make_model("concat", ("image", "note")), TrainOptions(), plain, plain, counts)   # off: as before
    split, _ = synthetic_split(64, 0)
    lit = LitClassifier(dual_only_model(), TrainOptions(stream_gate_balance=0.1), split, split, counts)
    assert lit.opts.stream_gate_balance == 0.1
