"""Faithfulness of explanations, measured.

* deletion / insertion curves (AUC of the calibrated target probability as the most important
  pixels / tokens / features / wavelengths are removed from the case, or inserted into a neutral
  baseline): a faithful explanation makes deletion fall fast (low AUC) and insertion rise fast
  (high AUC);
* Captum's infidelity and max-sensitivity for the table and spectrum attributions;
* the model-parameter randomisation sanity check (Adebayo et al. 2018): with the head's weights
  randomised, an explanation that still looks the same is not explaining the model;
* cohort level: CAM mass in the lesion for lesion- vs context-decided cases, pointing game, and
  whether the top modality by Shapley value is the generator's evidence source.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy.stats import spearmanr

from .context import ExplainContext

FRACTIONS = np.linspace(0.0, 1.0, 11)


def _auc(y: Sequence[float]) -> float:
    y = np.asarray(y, dtype=np.float64)
    return float(np.sum((y[1:] + y[:-1]) / 2) / (len(y) - 1))


def _curves(prob_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, base: torch.Tensor, order: np.ndarray,
            unit_index: Callable[[np.ndarray], torch.Tensor]) -> dict[str, Any]:
    """Deletion: x with its top-k units set to the baseline; insertion: the baseline with the top-k
    units of x. ``unit_index(top)`` -> a boolean mask over x's shape for the chosen units."""
    dels, ins = [], []
    for f in FRACTIONS:
        m = unit_index(order[: int(round(f * len(order)))])
        dels.append(torch.where(m, base, x))
        ins.append(torch.where(m, x, base))
    with torch.no_grad():
        p = prob_of(torch.cat(dels + ins)).numpy()
    d, i = p[: len(FRACTIONS)], p[len(FRACTIONS):]
    return {"fractions": FRACTIONS.tolist(), "deletion": d.tolist(), "insertion": i.tolist(),
            "deletion_auc": _auc(d), "insertion_auc": _auc(i)}


def _prob(ctx: ExplainContext, modality: str, key: str, fixed: dict[str, torch.Tensor] | None = None):
    def f(x: torch.Tensor) -> torch.Tensor:
        inp = {key: x, **{k: v.expand(x.shape[0], *v.shape[1:]) for k, v in (fixed or {}).items()}}
        return torch.softmax(ctx.calibrated_logits(modality, inp), -1)[:, ctx.target]
    return f


def image_deletion_insertion(ctx: ExplainContext, heatmap: np.ndarray, patch: int = 16) -> dict[str, Any]:
    """Units are patch x patch squares ranked by mean heatmap; the baseline is a heavily blurred image."""
    from ..imaging import keep_region

    x = ctx.inputs["image"]["pixels"]
    S = x.shape[-1]
    blurred = ctx.pixel_encoder.prepare([keep_region(ctx.case.image.resize((S, S)), np.zeros((S, S), dtype=bool))])["pixels"]
    g = S // patch
    hm = torch.nn.functional.interpolate(torch.as_tensor(heatmap)[None, None].float(), size=(g * patch, g * patch),
                                         mode="bilinear", align_corners=False)
    scores = hm.reshape(g, patch, g, patch).mean((1, 3)).flatten().numpy()
    order = np.argsort(-scores, kind="stable")

    def unit_index(top: np.ndarray) -> torch.Tensor:
        grid = torch.zeros(g * g, dtype=torch.bool)
        grid[torch.as_tensor(top, dtype=torch.long)] = True
        m = grid.view(g, g).repeat_interleave(patch, 0).repeat_interleave(patch, 1)
        m = torch.nn.functional.pad(m, (0, S - g * patch, 0, S - g * patch))
        return m.view(1, 1, S, S)

    return _curves(_prob(ctx, "image", "pixels", ctx.image_fixed()), x, blurred, order, unit_index)


def token_deletion_insertion(ctx: ExplainContext, note: dict[str, Any]) -> dict[str, Any]:
    """Units are word pieces ranked by attribution; the baseline replaces them with [PAD]."""
    enc = ctx.model.encoders["note"]
    tok = enc.tokenizer(ctx.case.note, truncation=True, max_length=enc.max_length, return_special_tokens_mask=True,
                        return_tensors="pt")
    ids, mask = tok["input_ids"], tok["attention_mask"]
    special = tok["special_tokens_mask"][0].bool()
    scores = np.asarray(note["token_scores"], dtype=np.float64)
    scores[special.numpy()] = -np.inf
    order = np.argsort(-scores, kind="stable")[: int((~special).sum())]
    base = torch.where(special, ids[0], torch.full_like(ids[0], enc.pad_token_id)).unsqueeze(0)

    def unit_index(top: np.ndarray) -> torch.Tensor:
        m = torch.zeros_like(ids, dtype=torch.bool)
        m[0, torch.as_tensor(top, dtype=torch.long)] = True
        return m

    return _curves(_prob(ctx, "note", "input_ids", {"attention_mask": mask}), ids, base, order, unit_index)


def feature_deletion_insertion(ctx: ExplainContext, table: dict[str, Any]) -> dict[str, Any]:
    schema = ctx.model.encoders["metadata"].schema
    x = ctx.inputs["metadata"]["values"]
    base = torch.tensor([schema.baseline_row()], dtype=x.dtype)
    scores = np.array([f["integrated_gradients"] for f in table["features"]])
    order = np.argsort(-scores, kind="stable")

    def unit_index(top: np.ndarray) -> torch.Tensor:
        m = torch.zeros_like(x, dtype=torch.bool)
        for i in top:
            m[0, schema.slices[int(i)]] = True
        return m

    return _curves(_prob(ctx, "metadata", "values"), x, base, order, unit_index)


def spectrum_deletion_insertion(ctx: ExplainContext, spectrum: dict[str, Any], window: int = 20) -> dict[str, Any]:
    enc = ctx.model.encoders["spectrum"]
    x = ctx.inputs["spectrum"]["spectrum"]
    base = enc.mean.unsqueeze(0).to(x.dtype)
    a = np.asarray(spectrum["attributions"])
    n = len(a)
    nw = int(np.ceil(n / window))
    scores = np.array([a[i * window:(i + 1) * window].sum() for i in range(nw)])
    order = np.argsort(-scores, kind="stable")

    def unit_index(top: np.ndarray) -> torch.Tensor:
        m = torch.zeros_like(x, dtype=torch.bool)
        for i in top:
            m[0, int(i) * window:(int(i) + 1) * window] = True
        return m

    return _curves(_prob(ctx, "spectrum", "spectrum"), x, base, order, unit_index)


def infidelity_sensitivity(ctx: ExplainContext, modality: str, n_perturb: int = 16, seed: int = 0) -> dict[str, float]:
    """Captum infidelity (noise perturbations) and max-sensitivity of IG for the table or spectrum."""
    from captum.attr import IntegratedGradients
    from captum.metrics import infidelity, sensitivity_max

    key = {"metadata": "values", "spectrum": "spectrum"}[modality]
    x = ctx.inputs[modality][key]
    f = ctx.target_fn(modality, key)
    ig = IntegratedGradients(f)
    base = (torch.tensor([ctx.model.encoders["metadata"].schema.baseline_row()], dtype=x.dtype) if modality == "metadata"
            else ctx.model.encoders["spectrum"].mean.unsqueeze(0).to(x.dtype))
    scale = float(x.std()) or 1.0
    gen = torch.Generator().manual_seed(seed)

    def perturb(inp: torch.Tensor):
        noise = torch.randn(inp.shape, generator=gen) * 0.05 * scale
        return noise, inp - noise

    def ball(inp: torch.Tensor, radius: float) -> torch.Tensor:
        # Captum's default draws from the process-wide generator; this one uses the private ``gen``
        return inp + (torch.rand(inp.shape, generator=gen, dtype=inp.dtype) * 2 - 1) * radius

    with torch.enable_grad():
        attr = ig.attribute(x, baselines=base, n_steps=16, method="gausslegendre", internal_batch_size=16)
        infid = infidelity(f, perturb, x, attr, n_perturb_samples=n_perturb)
        sens = sensitivity_max(lambda inp: ig.attribute(inp, baselines=base, n_steps=8, method="gausslegendre",
                                                        internal_batch_size=8), x, perturb_func=ball,
                               perturb_radius=0.02 * scale, n_perturb_samples=4)
    return {"infidelity": float(infid), "max_sensitivity": float(sens)}


def randomisation_check(ctx: ExplainContext, explain: Callable[[ExplainContext], np.ndarray], seed: int = 0) -> dict[str, Any]:
    """Re-explain with the head's weights randomised (a private copy of the model): the rank
    correlation with the original explanation should collapse. ``passed`` when |rho| < 0.5."""
    original = np.asarray(explain(ctx)).ravel()
    random_ctx = copy.copy(ctx)
    random_ctx.model = copy.deepcopy(ctx.model)
    # A private generator: the process-wide one (which other users' explanations draw from) is never touched.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in random_ctx.model.head.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen, dtype=mod.weight.dtype))
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen, dtype=mod.bias.dtype))
    randomised = np.asarray(explain(random_ctx)).ravel()
    rho = spearmanr(original, randomised).statistic if original.std() > 0 and randomised.std() > 0 else 0.0
    rho = 0.0 if not np.isfinite(rho) else float(rho)
    return {"spearman": rho, "passed": abs(rho) < 0.5}
