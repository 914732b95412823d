"""The Lightning module: losses the seeds name, validation balanced accuracy, best weights kept."""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score

from ..model import MultimodalClassifier
from .config import TrainOptions
from .dataset import SplitTensors, modality_dropout, stream_dropout, stream_fills


def focal_loss(logits: torch.Tensor, y: torch.Tensor, gamma: float, smoothing: float = 0.0) -> torch.Tensor:
    ce = F.cross_entropy(logits, y, reduction="none", label_smoothing=smoothing)
    pt = torch.exp(-F.cross_entropy(logits, y, reduction="none"))
    return (1 - pt) ** gamma * ce


def symmetric_kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    p, q = logp.exp(), logq.exp()
    return ((p * (logp - logq)).sum(-1) + (q * (logq - logp)).sum(-1)) / 2


def gate_balance_loss(weights: torch.Tensor) -> torch.Tensor:
    """The mixture-of-experts importance loss on [B, M] modality weights (rows sum to 1): M * sum_m
    (batch mean of w_m)^2 - 1, zero when every input gets the same share of a batch, M - 1 when one input
    takes every case. It does not care how each case splits its weight, so it lets a gate pick one input
    per case while stopping all cases from collapsing onto the input that is easiest to fit first."""
    imp = weights.mean(0)
    return imp.numel() * (imp ** 2).sum() - 1


def balance_penalty(diagnostics: dict[str, Any]) -> torch.Tensor:
    """:func:`gate_balance_loss` of a variant's gates: of every level's gate separately where there are
    levels (``level_gates`` [B, L, M]; balancing only their weighted sum let one level drop an input for
    every case: measured, hierarchical's image weight then never varied), else of ``modality_weights``."""
    if "level_gates" in diagnostics:
        g = diagnostics["level_gates"]
        return torch.stack([gate_balance_loss(g[:, i]) for i in range(g.shape[1])]).mean()
    if "gates" in diagnostics:   # the gates' own shares (mmtm's modality_weights may follow them through attention)
        g = diagnostics["gates"]
        return gate_balance_loss(g / g.sum(-1, keepdim=True).clamp_min(1e-12))
    return gate_balance_loss(diagnostics["modality_weights"])


def lesion_gate_balance(out: Any, blanked: dict[str, torch.Tensor], modalities: list[str]) -> torch.Tensor:
    """:func:`gate_balance_loss` of the dual-expert lesion gates ``[w_l, 1 - w_l]`` over a batch: rows of present
    images whose streams were not blanked by ``stream_dropout`` (``blanked``: modality -> [n] code in present-row
    order, 0 = nothing blanked). Zero when the model has no lesion gate."""
    total = torch.zeros(())
    for j, m in enumerate(modalities):
        extras = out.features[j].extras or {}
        if "lesion_gate" not in extras:
            continue
        w = extras["lesion_gate"]
        w = w[~torch.isnan(w)]                                  # absent images: NaN rows
        if m in blanked:
            w = w[(blanked[m] == 0).to(w.device)]
        if w.numel():
            total = total.to(w.device) + gate_balance_loss(torch.stack([w, 1 - w], -1))
    return total


class LitClassifier(L.LightningModule):
    def __init__(self, model: MultimodalClassifier, opts: TrainOptions, train_data: SplitTensors, val_data: SplitTensors,
                 class_counts: list[int]):
        super().__init__()
        if opts.stream_gate_balance and not any(getattr(enc, "dual_expert", False) for enc in model.encoders.values()):
            # it would add nothing (lesion_gate_balance is 0 without a lesion gate): say so instead of training as if on
            raise ValueError("train.stream_gate_balance balances a dual-expert image encoder's lesion / global gate; "
                             "this model has no dual-expert image encoder (set it to 0).")
        self.model, self.opts = model, opts
        self.train_data, self.val_data = train_data, val_data
        prior = torch.tensor(class_counts, dtype=torch.float32).clamp_min(1)
        self.register_buffer("log_prior", (prior / prior.sum()).log(), persistent=False)
        # unimodal auxiliary heads, training only (seed 003's disagreement weighting); not saved in the package
        self.aux = nn.ModuleDict({m: nn.Linear(enc.out_dim, model.n_classes) for m, enc in model.encoders.items()}) \
            if opts.disagreement_weighting and len(model.modalities) > 1 else None
        self.gen = torch.Generator().manual_seed(opts.seed)
        # dual-expert stream dropout (off by default): what a blanked stream shows
        self.stream_fills = stream_fills(model, train_data, opts.stream_dropout_fill) if opts.stream_dropout > 0 else {}
        self.best_score, self.best_state = -math.inf, None
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def _class_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.opts.logit_adjustment:
            logits = logits + self.opts.logit_adjustment * self.log_prior
        if self.opts.loss == "focal":
            return focal_loss(logits, y, self.opts.focal_gamma, self.opts.label_smoothing)
        return F.cross_entropy(logits, y, reduction="none", label_smoothing=self.opts.label_smoothing)

    def training_step(self, idx: torch.Tensor, batch_idx: int) -> torch.Tensor:
        idx = idx.cpu()
        present = modality_dropout(self.train_data.presence(self.model, idx), self.opts.modality_dropout, self.gen)
        b = self.train_data.batch(self.model, idx, present)
        blanked: dict[str, torch.Tensor] = {}   # modality -> [n] 0 / 1 lesion / 2 global stream blanked
        if self.stream_fills:
            inputs, blanked = stream_dropout(b["inputs"], self.stream_fills, self.opts.stream_dropout, self.gen)
            b = {**b, "inputs": inputs}
        b = _to_device(b, self.device)
        out = self.model(b["inputs"], b["present"])
        y = b["labels"]
        per_case = self._class_loss(out.logits, y)
        weights = torch.ones_like(per_case)
        loss = 0.0
        if self.aux is not None:
            logps, aux_loss = [], 0.0
            for j, m in enumerate(self.model.modalities):
                lp = F.log_softmax(self.aux[m](out.features[j].pooled), -1)
                logps.append(lp)
                aux_loss = aux_loss + (F.nll_loss(lp, y, reduction="none") * b["present"][:, j]).mean()
            kl = torch.stack([symmetric_kl(logps[i], logps[k]) for i in range(len(logps)) for k in range(i + 1, len(logps))]).mean(0)
            weights = torch.exp(kl.detach().clamp(max=self.opts.kl_clip))
            weights = weights / weights.mean()
            loss = loss + 0.3 * aux_loss
        loss = loss + (weights * per_case).mean()
        for j, m in enumerate(self.model.modalities):  # encoders with an auxiliary classifier (dual expert, entropy gate)
            aux_logits = getattr(self.model.encoders[m], "last_aux_logits", None)
            if aux_logits is not None and aux_logits.shape[0] == int(b["present"][:, j].sum()):
                keep = (blanked[m] != 1).to(aux_logits.device) if m in blanked else None
                if keep is None:
                    loss = loss + 0.3 * F.cross_entropy(aux_logits, y[b["present"][:, j]])
                elif keep.any():   # a blanked lesion stream is not the lesion: no lesion-classifier loss on it
                    loss = loss + 0.3 * F.cross_entropy(aux_logits[keep], y[b["present"][:, j]][keep])
        if self.opts.stream_gate_balance:   # optional: the dual expert's lesion gate may not settle on one stream
            loss = loss + self.opts.stream_gate_balance * lesion_gate_balance(out, blanked, self.model.modalities)
        if self.model.last_reconstruction_loss is not None:  # missing: reconstruct
            loss = loss + self.opts.reconstruction_weight * self.model.last_reconstruction_loss
        balance = getattr(self.model.head, "last_balance_loss", None)
        if balance is not None:  # mixture-of-experts head: keep every expert in use
            loss = loss + self.opts.moe_balance_weight * balance
        # log_var learns to predict this case's loss (data uncertainty), without reweighting the classifier
        if self.opts.gate_entropy_weight and "modality_weights" in out.diagnostics:  # optional: decisive gates
            w = out.diagnostics["modality_weights"].clamp(1e-6, 1.0)
            loss = loss + self.opts.gate_entropy_weight * (-(w * w.log()).sum(-1)).mean()
        if self.opts.gate_balance_weight and "modality_weights" in out.diagnostics:  # optional: no collapse
            loss = loss + self.opts.gate_balance_weight * balance_penalty(out.diagnostics)
        ce = F.cross_entropy(out.logits, y, reduction="none").detach()
        loss = loss + self.opts.uncertainty_weight * (torch.exp(-out.log_var) * ce + out.log_var).mean()
        self.log("train_loss", loss, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, idx: torch.Tensor, batch_idx: int) -> None:
        b = _to_device(self.val_data.batch(self.model, idx.cpu()), self.device)
        out = self.model(b["inputs"], b["present"])
        self._val_logits.append(out.logits.detach())
        self._val_labels.append(b["labels"])

    def on_validation_epoch_end(self) -> None:
        logits = torch.cat(self._val_logits)
        labels = torch.cat(self._val_labels)
        self._val_logits.clear()
        self._val_labels.clear()
        if self.trainer.world_size > 1:  # every rank scores the whole validation split
            logits = self.all_gather(logits).flatten(0, 1)
            labels = self.all_gather(labels).flatten(0, 1)
        bacc = float(balanced_accuracy_score(labels.cpu().numpy(), logits.argmax(-1).cpu().numpy()))
        loss = float(F.cross_entropy(logits, labels))
        self.log("val_bacc", bacc, prog_bar=True, sync_dist=False)
        self.log("val_loss", loss, sync_dist=False)
        if bacc > self.best_score and not self.trainer.sanity_checking:
            self.best_score = bacc
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def configure_optimizers(self):
        opt = torch.optim.AdamW(param_groups(self.model, self.opts, extra=self.aux), lr=self.opts.lr)
        w, total = self.opts.warmup_epochs, max(1, self.opts.epochs)

        def factor(epoch: int) -> float:  # linear warm-up, then cosine decay to 0 (per epoch)
            if epoch < w:
                return (epoch + 1) / (w + 1)
            return 0.5 * (1 + math.cos(math.pi * (epoch - w) / max(1, total - w)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": sched}


#: parameters that are embeddings in timm's sense (no weight decay), by name fragment
_EMBEDDINGS = ("missing.", "type_emb", "fusion.pos", "fusion.cls")


def mechanism_parameter(name: str, model: MultimodalClassifier) -> bool:
    """True for a parameter that is the fusion's (or the MoE head's) mechanism: a temperature, level /
    scale / rank logits, a gate bias, the router."""
    if name.startswith("fusion."):
        return any(name.endswith(s) for s in getattr(model.fusion, "MECHANISM_PARAMETERS", ()))
    return name.startswith("head.router.")


def param_groups(model: MultimodalClassifier, opts: TrainOptions, extra: nn.Module | None = None) -> list[dict[str, Any]]:
    """AdamW groups in the manner of timm's ``param_groups_weight_decay`` and nanoGPT's decay split:
    weight matrices decay; biases, norms (every parameter of < 2 dimensions) and embeddings (missing-
    modality stand-ins, type / position / class tokens) do not; the mechanism parameters neither, and
    they learn ``mechanism_lr_mult`` times faster, since each is one scalar that the whole training set
    has to move (issue 14: at the base rate and with decay they stayed at their initial values)."""
    decay, no_decay, mech = [], [], []
    named = list(model.named_parameters()) + ([(f"aux.{n}", p) for n, p in extra.named_parameters()] if extra else [])
    for name, p in named:
        if not p.requires_grad:
            continue
        if mechanism_parameter(name, model):
            mech.append(p)
        elif p.ndim < 2 or any(e in name for e in _EMBEDDINGS):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": opts.weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
              {"params": mech, "weight_decay": 0.0, "lr": opts.lr * opts.mechanism_lr_mult, "name": "mechanism"}]
    return [g for g in groups if g["params"]]


def _to_device(b: dict[str, Any], device: torch.device) -> dict[str, Any]:
    if device.type == "cpu":
        return b
    from ..encoders import ModalityFeatures

    def mv(x):
        if x is None:
            return None
        if isinstance(x, ModalityFeatures):
            return ModalityFeatures(x.pooled.to(device), tuple(t.to(device) for t in x.levels), x.tokens.to(device),
                                    x.token_mask.to(device))
        if isinstance(x, dict):
            return {k: mv(v) for k, v in x.items()}
        return x.to(device)

    return {"inputs": {m: mv(v) for m, v in b["inputs"].items()}, "present": b["present"].to(device), "labels": b["labels"].to(device)}
