"""Can this fusion mechanism be read as an explanation of a case? Measured per package (issue 14).

For every diagnostic a variant exposes (gates, per-dimension gates summarised, temperature, level /
scale / rank weights, attention mass per modality, expert routing, the dual expert's lesion gate),
on a set of cases (a package's test split after training, or any cohort / seed through
``python -m core evaluate --mechanisms``):

* **movement**: how far each learned mechanism scalar moved from its initial value;
* **spread**: the across-case standard deviation of each per-case value (a value that never varies
  explains no single case);
* **agreement with contribution**: the mean per-case Spearman correlation between the variant's
  ``modality_weights`` and the case's exact modality Shapley values (of the calibrated probability
  of the predicted class, absent modalities masked with the learned missing embedding, as
  ``core.explain.modality`` does), and the share of cases where the top-weighted modality is the
  top-Shapley one, with chance levels beside them;
* **agreement with ground truth** where the cohort has it (the generator's ``evidence``): the
  balanced rate (mean over decisive modalities) at which the top-weighted modality is the decisive
  one, with its chance level.

:data:`THRESHOLDS` and :func:`reading` turn these into one plain-language sentence per mechanism;
pages and reports call :func:`readings` and never carry thresholds of their own.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..encoders.base import ModalityFeatures

#: the one place the plain-language readings' thresholds live
THRESHOLDS: dict[str, float] = {
    "spread_constant": 0.03,   # across-case std below this: a property of the model, not of the case
    "spread_varies": 0.08,     # at or above this: the value clearly varies from case to case
    "moved": 0.05,             # a learned scalar that moved less than this never left its initial value
    "rho_summary": 0.5,        # mean per-case Spearman with Shapley at or above this: a reasonable summary
    "rho_weak": 0.2,           # below this: it does not rank the inputs like their contributions
    "rho_over_shuffled": 0.1,  # and it must beat, by this much, the same weights paired with other cases'
                               # Shapley values (a constant ranking that happens to match the usual winner
                               # scores as high as it agrees, but explains no single case)
}

#: the generator's decisive source -> the modality that carries it
EVIDENCE_MODALITY = {"lesion": "image", "context": "image", "note": "note", "metadata": "metadata",
                     "table": "metadata", "spectrum": "spectrum"}

GLOBAL_KEYS = ("temperature", "level_weights", "scale_weights", "rank_weights")


# ------------------------------------------------------------------------------------------------
# per-case values
# ------------------------------------------------------------------------------------------------

def per_case_values(diag: Mapping[str, Any], modalities: Sequence[str]) -> dict[str, torch.Tensor]:
    """Diagnostics of a batch -> {mechanism name: [B] values}; one entry per modality where the
    diagnostic has one."""
    out: dict[str, torch.Tensor] = {}
    for key, v in diag.items():
        if not torch.is_tensor(v) or key in GLOBAL_KEYS:
            continue
        v = v.detach().float()
        if key in ("modality_weights", "gates") and v.dim() == 2:
            for j, m in enumerate(modalities):
                out[f"{key}:{m}"] = v[:, j]
        elif key == "gates_per_dim" and v.dim() == 3:
            # summarised: how unequal a case's per-dimension gates are (std over dimensions, mean over modalities)
            out["gates_per_dim:spread"] = v.std(-1).mean(-1)
        elif key == "level_gates" and v.dim() == 3:
            for j, m in enumerate(modalities):
                out[f"level_gates:{m}"] = v[:, :, j].mean(-1)
        elif key == "attention_mass" and v.dim() == 3:
            q = v.sum(-1) > 0   # rows of modalities that queried
            share = (v * q.unsqueeze(-1)).sum(1) / q.sum(1, keepdim=True).clamp_min(1)
            for j, m in enumerate(modalities):
                out[f"attention_mass:{m}"] = share[:, j]
        elif key == "expert_weights" and v.dim() == 2:
            for e in range(v.shape[1]):
                out[f"expert_weights:{e}"] = v[:, e]
        elif v.dim() == 1 or (v.dim() == 2 and v.shape[1] == 1):
            out[key] = v.reshape(-1)   # gate_polarisation, image_lesion_gate, ...
    return out


def _subset(f: ModalityFeatures, keep: torch.Tensor) -> ModalityFeatures:
    return ModalityFeatures(f.pooled[keep], tuple(l[keep] for l in f.levels), f.tokens[keep],  # type: ignore[arg-type]
                            f.token_mask[keep], None if not f.extras else {k: v[keep] for k, v in f.extras.items()})


def _raw_features(model, inputs: Mapping[str, Any]) -> dict[str, ModalityFeatures | None]:
    raw = {}
    for m in model.modalities:
        x = inputs.get(m)
        raw[m] = None if x is None else (x if isinstance(x, ModalityFeatures) else model.encoders[m](**x))
    return raw


def batch_measure(model, inputs: Mapping[str, Any], present: torch.Tensor, temperature: float
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch: (per-case mechanism values, modality_weights [B, M], exact modality Shapley values
    [B, M] of the calibrated probability of the predicted class, predicted class [B])."""
    mods = list(model.modalities)
    M = len(mods)
    with torch.no_grad():
        raw = _raw_features(model, inputs)
        out = model.fuse_and_classify(model.encode(raw, present), present)
        target = out.logits.argmax(-1)
        values = per_case_values(out.diagnostics, mods)
        weights = out.diagnostics["modality_weights"].float()
        v: dict[tuple[int, ...], torch.Tensor] = {}
        for r in range(M + 1):
            for coal in itertools.combinations(range(M), r):
                mask = torch.zeros(M, dtype=torch.bool)
                mask[list(coal)] = True
                p_s = present & mask
                ins = {}
                for j, m in enumerate(mods):
                    if raw[m] is None:
                        ins[m] = None
                        continue
                    keep = p_s[present[:, j], j]
                    ins[m] = _subset(raw[m], keep) if bool(keep.any()) else None
                o = model.fuse_and_classify(model.encode(ins, p_s), p_s)
                v[coal] = torch.softmax(o.logits / temperature, -1).gather(1, target[:, None]).squeeze(1)
        shap = torch.zeros(present.shape[0], M)
        for j in range(M):
            others = [i for i in range(M) if i != j]
            for r in range(M):
                w = math.factorial(r) * math.factorial(M - r - 1) / math.factorial(M)
                for s in itertools.combinations(others, r):
                    shap[:, j] += w * (v[tuple(sorted(s + (j,)))] - v[s])
    return values, weights, shap, target


# ------------------------------------------------------------------------------------------------
# movement of the learned scalars
# ------------------------------------------------------------------------------------------------

def movement(model) -> dict[str, dict[str, Any]]:
    """Each learned mechanism scalar: its initial value (from the architecture), its value, |change|."""
    f = model.fusion
    out: dict[str, dict[str, Any]] = {}

    def add(name, init, value):
        init, value = [float(x) for x in np.atleast_1d(init)], [float(x) for x in np.atleast_1d(value)]
        out[name] = {"init": init, "value": value, "moved": max(abs(a - b) for a, b in zip(init, value))}

    if hasattr(f, "log_tau"):
        add("temperature", _init_tau(model), float(f.log_tau.detach().exp()))
    if hasattr(f, "level_logits"):
        n = f.level_logits.numel()
        init = [0.5] * n if getattr(f, "level_weighting", "sigmoid") == "sigmoid" else [1.0 / n] * n
        add("level_weights", init, f.level_weights().detach().numpy())
    if hasattr(f, "scale_logits"):
        n = f.scale_logits.numel()
        add("scale_weights", [1.0 / n] * n, torch.softmax(f.scale_logits.detach(), 0).numpy())
    if hasattr(f, "rank_logits"):
        n = f.rank_logits.numel()
        add("rank_weights", [1.0 / n] * n, torch.softmax(f.rank_logits.detach(), 0).numpy())
    return out


def _init_tau(model) -> float:
    return float(model.fusion_options.get("init_temperature", 1.0))


# ------------------------------------------------------------------------------------------------
# the record
# ------------------------------------------------------------------------------------------------

def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1), np.nan)


def summarise(model, values: Mapping[str, np.ndarray], weights: np.ndarray, shap: np.ndarray, present: np.ndarray,
              evidence: Sequence[str | None] | None = None, seed: int = 0) -> dict[str, Any]:
    """Numbers of :mod:`core.explain.mechanisms` from per-case arrays (all rows of one case set)."""
    mods = list(model.modalities)
    M = len(mods)
    full = present.all(1)
    rec: dict[str, Any] = {"variant": model.fusion_name, "n_cases": int(len(weights)), "modalities": mods,
                           "movement": movement(model), "spread": {}, "distribution": {}}
    for k, v in values.items():
        v = np.asarray(v, dtype=float)
        ok = np.isfinite(v)
        if not ok.any():
            continue
        rec["spread"][k] = float(v[ok].std())
        qs = np.quantile(v[ok], [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
        hist, edges = np.histogram(v[ok], bins=20)
        rec["distribution"][k] = {"mean": float(v[ok].mean()), "quantiles": [float(q) for q in qs],
                                  "hist": hist.tolist(), "edges": [float(e) for e in edges]}
    # agreement with contribution (cases with every input present, so both rank the same players)
    agree: dict[str, Any] = {"n_cases": int(full.sum())}
    if M > 1 and full.any():
        w, s = weights[full], shap[full]
        rho = _spearman_rows(w, s)
        top = w.argmax(1) == s.argmax(1)
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(w))
        rho_shuf = _spearman_rows(w[perm], s)
        agree.update({
            "spearman_mean": float(np.nanmean(rho)) if np.isfinite(rho).any() else None,
            "spearman_defined_share": float(np.isfinite(rho).mean()),
            "spearman_chance": 0.0,
            "spearman_shuffled_cases": float(np.nanmean(rho_shuf)) if np.isfinite(rho_shuf).any() else None,
            "top_match": float(top.mean()),
            "top_match_chance": 1.0 / M,
            "top_match_shuffled_cases": float((w[perm].argmax(1) == s.argmax(1)).mean()),
            "shapley_top_share": {m: float((s.argmax(1) == j).mean()) for j, m in enumerate(mods)},
            "weight_top_share": {m: float((w.argmax(1) == j).mean()) for j, m in enumerate(mods)},
        })
    rec["agreement_with_shapley"] = agree
    # agreement with the generator's ground truth
    if evidence is not None and M > 1:
        dec = np.array([mods.index(EVIDENCE_MODALITY[e]) if e in EVIDENCE_MODALITY and EVIDENCE_MODALITY[e] in mods
                        else -1 for e in evidence])
        ok = (dec >= 0) & full
        if ok.any():
            top_w, top_s = weights[ok].argmax(1), shap[ok].argmax(1)
            d = dec[ok]
            classes = sorted(set(d.tolist()))
            per = {mods[c]: {"n": int((d == c).sum()), "weight_top_rate": float((top_w[d == c] == c).mean()),
                             "shapley_top_rate": float((top_s[d == c] == c).mean())} for c in classes}
            rec["agreement_with_evidence"] = {
                "n_cases": int(ok.sum()), "per_decisive_modality": per,
                "balanced_weight_top_rate": float(np.mean([p["weight_top_rate"] for p in per.values()])),
                "balanced_shapley_top_rate": float(np.mean([p["shapley_top_rate"] for p in per.values()])),
                # a constant or random choice of modality scores 1/(number of decisive modalities) balanced
                "chance": 1.0 / len(classes),
            }
    rec["readings"] = {k: reading(rec, k) for k in mechanism_names(rec)}
    return rec


def mechanism_names(rec: Mapping[str, Any]) -> list[str]:
    return list(rec.get("movement", {})) + list(rec.get("spread", {}))


def measure_split(model, split, temperature: float, evidence: Sequence[str | None] | None = None,
                  batch: int = 256, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record for a prepared split (``core.training.dataset.SplitTensors``, cached features), or for
    several pooled (a list; ``evidence`` then runs over their cases in order)."""
    model.eval()
    chunks = []
    for sp in (split if isinstance(split, (list, tuple)) else [split]):
        for start in range(0, len(sp), batch):
            idx = torch.arange(start, min(start + batch, len(sp)))
            b = sp.batch(model, idx)
            chunks.append((*batch_measure(model, b["inputs"], b["present"], temperature), b["present"]))
    rec = _collect(model, chunks, evidence)
    if data:
        rec["data"] = dict(data)   # which cases (cohort, seed, split): the page says what the distribution is of
    return rec


def measure_cases(pkg, items: Sequence[Any], batch: int = 64) -> dict[str, Any]:
    """The record on cohort items (``CohortItem``) through the deployed preprocessing (any cohort / seed)."""
    from ..package import prepare_batch

    model = pkg.model
    model.eval()
    chunks = []
    for start in range(0, len(items), batch):
        cases = [it.to_case(with_mask=False) for it in items[start:start + batch]]  # as evaluate_package
        inputs, present, _ = prepare_batch(model, cases)
        chunks.append((*batch_measure(model, inputs, present, pkg.temperature), present))
    return _collect(model, chunks, [getattr(it, "evidence", None) for it in items])


def _collect(model, chunks, evidence) -> dict[str, Any]:
    keys = sorted({k for c in chunks for k in c[0]})
    values = {k: np.concatenate([c[0][k].numpy() if k in c[0] else np.full(len(c[1]), np.nan) for c in chunks])
              for k in keys}
    weights = np.concatenate([c[1].numpy() for c in chunks])
    shap = np.concatenate([c[2].numpy() for c in chunks])
    present = np.concatenate([c[4].numpy() for c in chunks]).astype(bool)
    return summarise(model, values, weights, shap, present, evidence)


# ------------------------------------------------------------------------------------------------
# plain-language readings
# ------------------------------------------------------------------------------------------------

def _label(name: str) -> str:
    key, _, part = name.partition(":")
    nice = {"modality_weights": "modality weight", "gates": "gate", "gates_per_dim": "per-dimension gates",
            "level_gates": "level gate", "attention_mass": "attention share", "expert_weights": "expert",
            "gate_polarisation": "gate polarisation", "image_lesion_gate": "lesion gate w_l",
            "temperature": "temperature", "level_weights": "level weights", "scale_weights": "scale weights",
            "rank_weights": "rank weights"}.get(key, key.replace("_", " "))
    if key == "gates_per_dim":
        return "spread of the per-dimension gates"
    return f"{nice} of the {part}" if part and key != "expert_weights" else (f"{nice} {part}" if part else nice)


def reading(rec: Mapping[str, Any], name: str) -> dict[str, Any]:
    """{name, label, value (spread or movement), sentence, trust: 'case' | 'summary' | 'model' | 'weak'}."""
    t = THRESHOLDS
    label = _label(name)
    if name in rec.get("movement", {}):
        mv = rec["movement"][name]
        if mv["moved"] < t["moved"]:
            return {"name": name, "label": label, "value": mv["moved"], "trust": "model",
                    "sentence": f"The {label} barely left {'its initial value' if len(mv['init']) == 1 else 'their initial values'} "
                                f"in training (moved {mv['moved']:.3f}): read {'it' if len(mv['init']) == 1 else 'them'} as a "
                                "constant of the model, not as something it learned."}
        return {"name": name, "label": label, "value": mv["moved"], "trust": "summary",
                "sentence": f"The {label} moved {mv['moved']:.2f} from "
                            f"{'its initial value' if len(mv['init']) == 1 else 'their initial values'} "
                            "in training: a learned property of the model, the same for every case."}
    sd = rec.get("spread", {}).get(name)
    if sd is None:
        return {"name": name, "label": label, "value": None, "trust": "weak", "sentence": f"The {label} was not measured."}
    if sd < t["spread_constant"]:
        return {"name": name, "label": label, "value": sd, "trust": "model",
                "sentence": f"The {label} barely varies across cases (σ = {sd:.3f}): read it as a property of the "
                            "model, not of this case."}
    agree = rec.get("agreement_with_shapley", {})
    rho = agree.get("spearman_mean")
    shuffled = agree.get("spearman_shuffled_cases")
    ranks_inputs = name.split(":")[0] in ("modality_weights", "gates", "attention_mass", "level_gates")
    if ranks_inputs and rho is not None:
        if shuffled is not None and rho - shuffled < t["rho_over_shuffled"]:
            return {"name": name, "label": label, "value": sd, "trust": "weak",
                    "sentence": f"The {label} varies (σ = {sd:.2f}) but ranks the inputs no better with this case's "
                                f"Shapley contributions (ρ = {rho:.2f}) than with another case's ({shuffled:.2f}): "
                                "it does not say what decided this case; use the Shapley values."}
        if rho >= t["rho_summary"] and sd >= t["spread_varies"]:
            return {"name": name, "label": label, "value": sd, "trust": "case",
                    "sentence": f"The {label} varies from case to case (σ = {sd:.2f}) and across the test split the "
                                f"weights rank the inputs like their Shapley contributions (ρ = {rho:.2f}): a "
                                "reasonable summary of this case."}
        if rho < t["rho_weak"]:
            return {"name": name, "label": label, "value": sd, "trust": "weak",
                    "sentence": f"The {label} varies (σ = {sd:.2f}) but the weights do not rank the inputs like their "
                                f"Shapley contributions (ρ = {rho:.2f}, chance 0): it is not evidence of what "
                                "decided this case; use the Shapley values."}
        return {"name": name, "label": label, "value": sd, "trust": "weak",
                "sentence": f"The {label} varies (σ = {sd:.2f}) and agrees only partly with the Shapley "
                            f"contributions (ρ = {rho:.2f}): read it together with the Shapley values."}
    if sd >= t["spread_varies"]:
        return {"name": name, "label": label, "value": sd, "trust": "case",
                "sentence": f"The {label} varies from case to case (σ = {sd:.2f}): this case's value says "
                            "something about this case."}
    return {"name": name, "label": label, "value": sd, "trust": "weak",
            "sentence": f"The {label} varies only a little across cases (σ = {sd:.2f}): small differences "
                        "between cases are not meaningful."}


def percentile(rec: Mapping[str, Any], name: str, value: float) -> float | None:
    """Where ``value`` falls in the measured distribution of ``name`` (0–100), from the stored histogram."""
    d = rec.get("distribution", {}).get(name)
    if not d:
        return None
    hist, edges = np.asarray(d["hist"], float), np.asarray(d["edges"], float)
    if hist.sum() == 0:
        return None
    cum = np.concatenate([[0.0], np.cumsum(hist)]) / hist.sum()
    return float(100 * np.interp(value, edges, cum))


def record_of(package_or_record: Any) -> dict[str, Any] | None:
    """A package's stored ``mechanisms`` record (metrics.json), or the record itself."""
    if isinstance(package_or_record, Mapping):
        return dict(package_or_record.get("mechanisms", package_or_record)) or None
    path = getattr(package_or_record, "path", None)
    if path is None:
        return None
    import json
    from pathlib import Path

    f = Path(path) / "metrics.json"
    try:
        rec = json.loads(f.read_text()).get("mechanisms")
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def readings(package_or_record: Any, prediction: Any = None) -> list[dict[str, Any]]:
    """One reading per mechanism: {name, label, value (this case's value, if the prediction has it),
    reading_sentence, trust_level, percentile (this case in the test split's distribution), spread}.
    Empty when the package carries no ``mechanisms`` record (packages trained before issue 14)."""
    rec = record_of(package_or_record)
    if not rec:
        return []
    case_vals: dict[str, float] = {}
    if prediction is not None:
        diag = getattr(prediction, "diagnostics", None)
        if diag is None and isinstance(prediction, Mapping):
            diag = prediction.get("diagnostics", prediction)
        if isinstance(diag, Mapping):
            tens = {k: (torch.as_tensor(v).unsqueeze(0) if k not in GLOBAL_KEYS else v) for k, v in diag.items()
                    if isinstance(v, (torch.Tensor, np.ndarray, list, float, int)) and k not in ("attention", "attention_key_spans")}
            try:
                vals = per_case_values({k: torch.as_tensor(v, dtype=torch.float32) for k, v in tens.items()
                                        if k not in GLOBAL_KEYS}, rec.get("modalities", []))
                case_vals = {k: float(v.reshape(-1)[0]) for k, v in vals.items()}
            except (TypeError, ValueError, RuntimeError, IndexError):
                case_vals = {}
    out = []
    for name in mechanism_names(rec):
        r = reading(rec, name)
        v = case_vals.get(name)
        if name in rec.get("movement", {}):
            v = rec["movement"][name]["value"]
            v = v[0] if len(v) == 1 else v
        out.append({"name": name, "label": r["label"], "value": v, "reading_sentence": r["sentence"],
                    "trust_level": r["trust"], "spread": rec.get("spread", {}).get(name),
                    "percentile": percentile(rec, name, v) if isinstance(v, float) and name in rec.get("distribution", {}) else None})
    return out


def text_report(rec: Mapping[str, Any]) -> str:
    """The record as the lines ``evaluate --mechanisms`` prints."""
    lines = [f"mechanisms of {rec.get('variant')} on {rec.get('n_cases')} cases"]
    for k, mv in rec.get("movement", {}).items():
        lines.append(f"  movement  {k:28s} init {', '.join(f'{x:.3f}' for x in mv['init'])} -> "
                     f"{', '.join(f'{x:.3f}' for x in mv['value'])}  (moved {mv['moved']:.3f})")
    for k, sd in rec.get("spread", {}).items():
        lines.append(f"  spread    {k:28s} sd {sd:.3f}  mean {rec['distribution'][k]['mean']:.3f}")
    a = rec.get("agreement_with_shapley", {})
    if a.get("spearman_mean") is not None:
        lines.append(f"  Shapley   mean per-case Spearman(modality_weights, Shapley) {a['spearman_mean']:.3f} "
                     f"(chance 0; shuffled cases {a['spearman_shuffled_cases']:.3f}; n = {a['n_cases']})")
        lines.append(f"  Shapley   top-weighted = top-Shapley modality {a['top_match']:.3f} (chance {a['top_match_chance']:.3f}; "
                     f"shuffled cases {a['top_match_shuffled_cases']:.3f})")
    e = rec.get("agreement_with_evidence")
    if e:
        per = ", ".join(f"{m} {p['weight_top_rate']:.2f} (n={p['n']})" for m, p in e["per_decisive_modality"].items())
        lines.append(f"  evidence  top-weighted = decisive modality, balanced {e['balanced_weight_top_rate']:.3f} "
                     f"(chance {e['chance']:.3f}; Shapley top {e['balanced_shapley_top_rate']:.3f}): {per}")
    for r in rec.get("readings", {}).values():
        lines.append(f"  [{r['trust']}] {r['sentence']}")
    return "\n".join(lines)
