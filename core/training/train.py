"""Training entry points: one model from a config, a whole suite, and evaluation of a split.

Two stages keep a suite cheap: the pretrained image / note encoders stay frozen and their outputs
are computed once per case (cached on disk); every fusion variant + head (and the small table /
spectrum encoders) then trains on those cached features. After training, the calibration
temperature and referral threshold are fitted on the validation split and the test split is
evaluated with bootstrap intervals; all of it goes into the package.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data import Cohort
from ..data.cohorts import COHORTS, names_sentence
from ..encoders import build_encoder
from ..fusion import FUSIONS
from ..model import MultimodalClassifier
from ..package import posterior, save_package
from ..uncertainty import fit_temperature
from .config import DataConfig, TrainConfig, TrainOptions, TrainerOptions
from .dataset import IndexDataset, SplitTensors, build_split, cache_root, class_sample_weights
from .metrics import classification_metrics, save_figures


def load_cohort(data: DataConfig) -> Cohort:
    """A registered demo cohort (``core.data.cohorts.COHORTS``), else the dataset at ``data.path``."""
    if data.cohort is not None:
        if data.cohort not in COHORTS:
            raise ValueError(f"unknown cohort '{data.cohort}'; use {names_sentence(COHORTS.names())}, "
                             "or data.path for your own data.")
        return COHORTS.get(data.cohort).load(n=data.n, seed=data.seed, image_size=data.image_size)
    from ..data.loaders import load_dataset

    return load_dataset(data.path)


def default_encoder_config(modality: str, cohort: Cohort) -> dict[str, Any]:
    """The suite's defaults: frozen pretrained image / note encoders, trainable table / spectrum."""
    if modality == "image":
        return {"type": "image", "arch": "efficientnet_lite0", "pretrained": True, "image_size": 224, "token_grid": 4, "frozen": True}
    if modality == "note":
        return {"type": "text", "source": "minilm", "max_length": 64, "frozen": True}
    if modality == "metadata":
        return {"type": "tabular", "schema": cohort.schema, "hidden": 64, "out_dim": 64, "token_dim": 32}
    return {"type": "spectrum", "wavelengths": cohort.spectrum_grid, "channels": 16, "out_dim": 128}


def build_from_config(cfg: TrainConfig, cohort: Cohort) -> MultimodalClassifier:
    torch.manual_seed(cfg.train.seed)   # before the encoders: trainable encoders' initial weights follow the seed too
    encoders = {}
    for m in cfg.modalities:
        if m not in cohort.modalities:
            raise ValueError(f"the {cohort.name} cohort has no '{m}' modality; it has {', '.join(cohort.modalities)}.")
        enc_cfg = {**default_encoder_config(m, cohort), **cfg.encoders.get(m, {})}
        encoders[m] = build_encoder(m, enc_cfg)
    if "spectrum" in encoders:
        train = [it.spectrum for it in cohort.split("train") if it.spectrum is not None]
        encoders["spectrum"].set_normalisation(np.stack([encoders["spectrum"].resample(s) for s in train]))
    return MultimodalClassifier(encoders, len(cohort.labels), cfg.variant, fusion_options_for(cfg), cfg.fused_dim,
                                cfg.head, cfg.missing)


def fusion_options_for(cfg: TrainConfig) -> dict[str, Any]:
    """The variant's training defaults (identifiable mechanisms, see ``Fusion.TRAINING_DEFAULTS``) under
    the config's own ``fusion_options``; the package records the result, so it rebuilds the same forward."""
    return {**FUSIONS.get(cfg.variant).TRAINING_DEFAULTS, **cfg.fusion_options}


def predict_split(model: MultimodalClassifier, data: SplitTensors, mc_samples: int, seed: int = 0, batch: int = 256):
    """Deterministic logits plus T MC-dropout samples of the head for a whole split."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    det, mc, lv = [], [], []
    with torch.inference_mode():
        for start in range(0, len(data), batch):
            idx = torch.arange(start, min(start + batch, len(data)))
            b = data.batch(model, idx)
            out = model(b["inputs"], b["present"])
            logits, log_var = model.head(out.fused, max(mc_samples, 1), gen)
            det.append(out.logits)
            mc.append(logits)
            lv.append(log_var)
    return torch.cat(det), torch.cat(mc, 1), torch.cat(lv, 1)


def evaluate_split(model: MultimodalClassifier, data: SplitTensors, labels: Sequence[str], temperature: float,
                   mc_samples: int = 30, n_boot: int = 200) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    det, mc, lv = predict_split(model, data, mc_samples)
    post = posterior(det, mc, lv, temperature)
    y = data.labels.numpy()
    metrics = classification_metrics(y, post.calibrated.numpy(), post.probabilities.numpy(),
                                     post.normalised_entropy.numpy(), labels, n_boot=n_boot)
    return metrics, post.calibrated.numpy(), post.probabilities.numpy()


def _trainer(opts: TrainOptions, topts: TrainerOptions, run_dir: Path):
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    n_proc = (int(topts.devices) if str(topts.devices).isdigit() else 1) * topts.num_nodes
    gpu = torch.cuda.is_available() and topts.accelerator in ("auto", "gpu", "cuda")
    precision = topts.precision if topts.precision != "auto" else ("16-mixed" if gpu else "32-true")
    # unused parameters are normal here (missing-modality embeddings, token paths a variant ignores)
    strategy = topts.strategy if topts.strategy != "auto" else ("ddp_find_unused_parameters_true" if n_proc > 1 else "auto")
    from lightning.pytorch.loggers import CSVLogger

    return L.Trainer(max_epochs=opts.epochs, accelerator=topts.accelerator, devices=topts.devices,
                     num_nodes=topts.num_nodes, strategy=strategy, precision=precision,
                     callbacks=[EarlyStopping(monitor="val_bacc", mode="max", patience=opts.patience)],
                     enable_checkpointing=False, logger=CSVLogger(str(run_dir), name="logs"),
                     enable_progress_bar=topts.progress_bar, enable_model_summary=False, deterministic=False,
                     log_every_n_steps=10, num_sanity_val_steps=0)


def fit(model: MultimodalClassifier, train: SplitTensors, val: SplitTensors, opts: TrainOptions, topts: TrainerOptions,
        run_dir: Path) -> tuple[MultimodalClassifier, dict[str, Any]]:
    """Train fusion + head (+ trainable encoders) on prepared splits; keep the best validation weights
    (also written as a safetensors checkpoint in ``run_dir``)."""
    import lightning as L
    from safetensors.torch import save_file

    from .module import LitClassifier

    L.seed_everything(opts.seed, workers=True, verbose=False)
    counts = torch.bincount(train.labels, minlength=model.n_classes).tolist()
    lit = LitClassifier(model, opts, train, val, counts)
    g = torch.Generator().manual_seed(opts.seed)
    if opts.weighted_sampler:
        sampler = torch.utils.data.WeightedRandomSampler(class_sample_weights(train.labels, model.n_classes), len(train),
                                                         replacement=True, generator=g)
        train_dl = torch.utils.data.DataLoader(IndexDataset(len(train)), batch_size=opts.batch_size, sampler=sampler,
                                               num_workers=opts.num_workers)
    else:
        train_dl = torch.utils.data.DataLoader(IndexDataset(len(train)), batch_size=opts.batch_size, shuffle=True,
                                               generator=g, num_workers=opts.num_workers)
    val_dl = torch.utils.data.DataLoader(IndexDataset(len(val)), batch_size=256, shuffle=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = _trainer(opts, topts, run_dir)
    model.train()  # Lightning keeps the modes it is given; frozen encoders stay in eval (Encoder.train)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    if opts.cpu_threads and not torch.cuda.is_available():
        torch.set_num_threads(opts.cpu_threads)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*Trying to infer the `batch_size`.*")
        warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")  # the frozen encoders, on purpose
        warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
        try:
            trainer.fit(lit, train_dl, val_dl)
        finally:
            torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    if lit.best_state is not None:
        model.load_state_dict(lit.best_state)
        if trainer.is_global_zero:
            save_file({k: v.contiguous() for k, v in lit.best_state.items()}, str(run_dir / "best.safetensors"))
    model.cpu().eval()
    info = {"epochs_run": int(trainer.current_epoch), "best_val_balanced_accuracy": float(lit.best_score),
            "train_seconds": round(seconds, 1), "is_global_zero": bool(trainer.is_global_zero),
            "world_size": int(trainer.world_size)}
    if opts.mechanism_refit_epochs > 0:
        info["mechanism_refit"] = refit_mechanism_scalars(model, train, opts)
    return model, info


def mechanism_scalars(model: MultimodalClassifier, scope: str = "scalars") -> dict[str, torch.nn.Parameter]:
    """The fusion's mechanism scalars (``Fusion.MECHANISM_SCALARS``): name -> parameter; with ``scope="mechanism"``
    all of ``Fusion.MECHANISM_PARAMETERS`` (the scalars and the layers that make the gates)."""
    names = getattr(model.fusion, "MECHANISM_SCALARS" if scope == "scalars" else "MECHANISM_PARAMETERS", ())
    return {n: p for n, p in model.fusion.named_parameters() if any(n.endswith(s) for s in names)}


def refit_mechanism_scalars(model: MultimodalClassifier, train: SplitTensors, opts: TrainOptions) -> dict[str, Any]:
    """Fit only the fusion's mechanism scalars on the training split, every other weight frozen and dropout
    off: class-balanced batches, plain cross-entropy + the gate balance loss (not the package's focal loss or
    gate-entropy term, if it uses them) for
    ``opts.mechanism_refit_epochs`` epochs of Adam at ``opts.mechanism_refit_lr`` (with
    ``opts.mechanism_refit_params="mechanism"`` also the layers that make the gates, at
    ``opts.mechanism_refit_layer_lr``). Measured (README #14):
    mmtm stops early (best validation epoch 4 of 20), when its scale logits still have a gradient of one
    sign on 98% of the training batches; a handful of scalars cannot overfit 7,000 cases.
    -> {name: {"before": [...], "after": [...]}, "seconds": s}."""
    from .module import balance_penalty

    params = mechanism_scalars(model, opts.mechanism_refit_params)
    if not params:
        return {}
    scalars = set(mechanism_scalars(model))
    before = {n: p.detach().clone() for n, p in params.items()}
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    model.eval()
    groups = [{"params": [p for n, p in params.items() if n in scalars], "lr": opts.mechanism_refit_lr},
              {"params": [p for n, p in params.items() if n not in scalars], "lr": opts.mechanism_refit_layer_lr}]
    opt = torch.optim.Adam([g for g in groups if g["params"]])
    g = torch.Generator().manual_seed(opts.seed)
    weights = torch.as_tensor(class_sample_weights(train.labels, model.n_classes)) if opts.weighted_sampler \
        else torch.ones(len(train))
    t0 = time.perf_counter()
    try:
        for _ in range(opts.mechanism_refit_epochs):
            order = torch.multinomial(weights, len(train), replacement=True, generator=g)
            for start in range(0, len(train), opts.batch_size):
                b = train.batch(model, order[start:start + opts.batch_size])
                out = model(b["inputs"], b["present"])
                loss = torch.nn.functional.cross_entropy(out.logits, b["labels"])
                if opts.gate_balance_weight and "modality_weights" in out.diagnostics:
                    loss = loss + opts.gate_balance_weight * balance_penalty(out.diagnostics)
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
    # the scalars' values; a gate layer's relative change (its values would bloat metrics.json)
    return {**{n: {"before": before[n].flatten().tolist(), "after": p.detach().flatten().tolist()} if n in scalars
               else {"relative_change": float((p.detach() - before[n]).norm() / before[n].norm().clamp_min(1e-12))}
               for n, p in params.items()},
            "seconds": round(time.perf_counter() - t0, 1)}


def finish_package(model: MultimodalClassifier, cohort: Cohort, val: SplitTensors, test: SplitTensors, cfg: TrainConfig,
                   train_info: dict[str, Any], n_boot: int = 200) -> Path:
    """Calibrate on validation, evaluate on test, write the package with metrics and figures."""
    opts = cfg.train
    det, mc, lv = predict_split(model, val, opts.mc_samples)
    temperature = fit_temperature(det, val.labels)
    val_post = posterior(det, mc, lv, temperature)
    threshold = float(np.quantile(val_post.normalised_entropy.numpy(), 1 - opts.refer_fraction))
    metrics, cal, uncal = evaluate_split(model, test, cohort.labels, temperature, opts.mc_samples, n_boot)
    metrics["calibration_temperature"] = temperature
    metrics["referral_threshold"] = threshold
    metrics["validation_balanced_accuracy"] = train_info.get("best_val_balanced_accuracy")
    metrics["training"] = train_info
    from ..explain.mechanisms import measure_split

    # can each fusion mechanism be read as an explanation of a case? (issue 14; test split)
    evidence = {it.case_id: it.evidence for it in cohort.items}
    metrics["mechanisms"] = measure_split(model, test, temperature, [evidence.get(i) for i in test.ids],
                                          data={"cohort": cohort.name, "seed": cfg.data.seed, "split": "test"})
    out = Path(cfg.out)
    save_package(model, out, cohort.labels, name=cfg.name, cohort=cohort.name, calibration_temperature=temperature,
                 referral_threshold=threshold, mc_samples=opts.mc_samples, training_data=cohort.training_data(),
                 metrics={k: metrics[k] for k in ("balanced_accuracy", "macro_f1", "auroc", "ece", "error_detection_auroc")},
                 shared=cfg.shared or None,
                 extra={"label_descriptions": cohort.label_descriptions, "train_config": cfg.to_dict()})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    save_figures(metrics, cal, uncal, test.labels.numpy(), cohort.labels, out)
    return out


def train(cfg: TrainConfig, cohort: Cohort | None = None, splits: dict[str, SplitTensors] | None = None,
          progress: bool = True) -> Path | None:
    """Train one package from a config. Returns its folder (None on non-zero DDP ranks)."""
    if cfg.variant not in FUSIONS:
        raise ValueError(f"unknown variant '{cfg.variant}'; known: {', '.join(FUSIONS.names())}.")
    cohort = cohort or load_cohort(cfg.data)
    model = build_from_config(cfg, cohort)
    if splits is None:
        tag = json.dumps(asdict(cfg.data), sort_keys=True)
        splits = {s: build_split(model, cohort.split(s), cohort.labels, tag + s, progress=progress) for s in ("train", "val", "test")}
    run_dir = cache_root() / "runs" / cfg.name.replace("/", "_")
    model, info = fit(model, splits["train"], splits["val"], cfg.train, cfg.trainer, run_dir)
    if not info["is_global_zero"]:
        return None
    return finish_package(model, cohort, splits["val"], splits["test"], cfg, info)
