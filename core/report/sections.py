"""The case report's content, once: a list of sections built from the report data, which the HTML and the
PDF back-ends (``html_backend``, ``pdf_backend``) only draw.

Both formats read in the same order. Page 1 carries what a clinician acts on: the image with its heatmap
and lesion outline, the calibrated prediction with its uncertainty in words, the referral advice, the
three strongest reasons per input in plain language, the model and its training data, and the
research-use notice. Details, the fusion internals (named for people, rounded), the faithfulness scores,
the variant comparison and the model follow.

The formats differ only by medium: a :class:`Figure` is an interactive plotly figure in the HTML and a
matplotlib PNG in the PDF; the note (:class:`Note`) is highlighted word by word in the HTML and printed as
text in the PDF; the PDF starts the details on a new page (``Section.new_page_after``). Every text here is
plain text: the back-ends escape it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, Union

from . import figures

if TYPE_CHECKING:
    from .render import CaseReport

DASH = "–"      # the range sign (95% CI 0.61–0.74, 1000–1100)


@dataclass(frozen=True)
class Text:
    """A paragraph. ``style``: body, small, headline (page 1's prediction), or a box: notice (research use),
    refer / ok (the referral advice)."""
    text: str
    style: str = "body"


@dataclass(frozen=True)
class Heading:
    """A sub-heading inside a section (the section's own title is ``Section.title``)."""
    text: str


@dataclass(frozen=True)
class Bullets:
    """A bullet list, with an optional sub-heading kept together with it. Each item is ``(lead, text)``:
    ``lead`` (may be empty) is printed in bold before the text."""
    items: Sequence[tuple[str, str]]
    title: str | None = None


@dataclass(frozen=True)
class Table:
    """Two-column rows; ``head`` names the columns; ``widths``: the PDF's column widths in cm."""
    rows: Sequence[Sequence[Any]]
    head: tuple[str, str] | None = None
    widths: tuple[float, float] = (6.0, 12.0)


@dataclass(frozen=True)
class Figure:
    """A chart: ``plotly()`` builds it for the HTML, ``png()`` for the PDF (``width_cm`` wide)."""
    plotly: Callable[[], Any]
    png: Callable[[], bytes]
    width_cm: float = 10.0


@dataclass(frozen=True)
class Images:
    """(caption, PNG) pictures side by side: the input image and each heatmap."""
    items: Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Note:
    """The clinical note; ``words``: its attributed words (``core.explain`` note part) or None."""
    text: str
    words: Sequence[Mapping[str, Any]] | None = None


@dataclass(frozen=True)
class Lead:
    """Page 1's top: the headline picture (caption, PNG) or None, and beside it the prediction texts."""
    picture: tuple[str, bytes] | None
    texts: Sequence[Text]


Block = Union[Text, Heading, Bullets, Table, Figure, Images, Note, Lead]


@dataclass
class Section:
    """``title``: the section heading (level 1 for the report's title, else 2; None: no heading)."""
    title: str | None
    blocks: list[Block] = field(default_factory=list)
    level: int = 2
    new_page_after: bool = False


# ---- pieces ----------------------------------------------------------------------------------------------------------

def pct(x: float) -> str:
    return f"{x:.0%}"


def _mask(rep: CaseReport):
    ex = rep.explanation
    if ex is not None and ex.lesion_context:
        return ex.lesion_context["mask"]
    return rep.case.mask


def _cam_name(method: str, ex) -> str:
    """Which method on which layer drew the heatmap (core.explain.gradcam.describe_cam)."""
    from ..explain.gradcam import describe_cam

    return describe_cam(method, ex.cam_layer) if getattr(ex, "cam_layer", None) else method


def headline_image(rep: CaseReport) -> tuple[str, bytes] | None:
    """Page 1's picture: the image with the first heatmap and the lesion outline (or the plain image)."""
    case, ex = rep.case, rep.explanation
    if case.image is None:
        return None
    mask = _mask(rep)
    if ex is not None and ex.cams:
        method, cam = next(iter(ex.cams.items()))
        cap = (f"Heatmap ({_cam_name(method, ex)}) for {ex.target_label}: red = the image regions that raised the "
               "probability most"
               + ("; green line = lesion outline" if mask is not None else ""))
        return cap, figures.cam_png(case.image, cam, mask, "")
    return ("Input image" + (" (green: lesion outline)" if mask is not None else ""), figures.thumbnail_png(case.image, mask))


def images(rep: CaseReport) -> list[tuple[str, bytes]]:
    """(caption, PNG) of the input image and each heatmap, for the details."""
    out: list[tuple[str, bytes]] = []
    case, ex = rep.case, rep.explanation
    if case.image is not None:
        out.append(("Input image (green: lesion outline)" if case.mask is not None else "Input image",
                    figures.thumbnail_png(case.image, case.mask)))
    if ex is not None and case.image is not None:
        mask = _mask(rep)
        shares = (ex.lesion_context or {}).get("shares", {})
        for method, cam in ex.cams.items():
            sh = shares.get(method)
            cap = f"{_cam_name(method, ex)} for {ex.target_label}" + (
                f": lesion {pct(sh['lesion'])}, surroundings {pct(sh['context'])}" if sh else "")
            out.append((cap, figures.cam_png(case.image, cam, mask, method)))
    return out


def model_rows(model: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows = [("Package", model["name"]), ("Fusion variant", model["variant"]), ("Model sha256", model["sha256"]),
            ("Inputs", ", ".join(model["modalities"])), ("Training data", model["training_data"] or "-"),
            ("Calibration temperature", f"{model['calibration_temperature']:.2f}"),
            ("Referral threshold (uncertainty, 0-1)", f"{model['referral_threshold']:.2f}")]
    names = {"balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1", "auroc": "AUROC", "ece": "calibration error (ECE)",
             "error_detection_auroc": "error detection AUROC"}
    for k, m in model["test_metrics"].items():
        ci = m.get("ci95")
        value = f"{m['value']:.2f}" + (f" (95% CI {ci[0]:.2f}{DASH}{ci[1]:.2f})" if ci else "")
        rows.append((f"Test {names.get(k, k.replace('_', ' '))}", value))
    return rows


def probability_rows(pred: Mapping[str, Any]) -> list[tuple[str, str]]:
    std = pred["mc_std"]
    return [(k, f"{v:.4f} ({v:.0%})" + (f", spread ± {std[k] * 100:.0f} points" if std.get(k) is not None else ""))
            for k, v in sorted(pred["calibrated_probabilities"].items(), key=lambda kv: -kv[1])]


def comparison_rows(c: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One row per compared package, named by the package (its variant type after it), not by the type alone:
    two packages of one type (HAM10000 gated and gated_kan) keep two distinguishable rows."""
    from ..plots.prediction import package_labels

    return [(name, f"{col['label']} {pct(col['probability'])}, uncertainty {col['normalised_entropy']:.2f}"
             + (", refer" if col["refer"] else "")) for name, col in zip(package_labels(c["columns"]), c["columns"])]


# ---- the sections ----------------------------------------------------------------------------------------------------

def _page_one(rep: CaseReport) -> list[Section]:
    d = rep.data
    sm = d["summary"]
    lead = Lead(headline_image(rep), [Text(sm["headline"], "headline"), Text(sm["uncertainty"]["sentence"]),
                                     Text(sm["referral"], "refer" if sm["refer"] else "ok"),
                                     *[Text(x, "small") for x in sm.get("referral_details", [])]])
    return [Section(f"FusionLens case report: {d['case']['case_id'] or 'unnamed case'}", [Text(d["notice"], "notice"), lead],
                    level=1),
            Section(f"Why: the strongest reasons per input (for {sm['label']})",
                    [Bullets([("", x) for x in r["reasons"]], r["title"]) for r in sm["reasons"]]),
            Section("Model and training data", [Text(x, "small") for x in sm["provenance"]], new_page_after=True)]


def _details(rep: CaseReport) -> Section:
    from .. import plots

    d = rep.data
    pred, ex = d["prediction"], d["explanation"]
    probs = pred["calibrated_probabilities"]
    blocks: list[Block] = [
        Table([("Case id", d["case"]["case_id"] or "-"), ("Case reference", d["case"]["case_reference"] or "-"),
               ("Generated", d["generated_at"]), ("Software", f"FusionLens {d['software']['version']}")]),
        Heading("Calibrated probability of every class"),
        Table(probability_rows(pred), ("class", "probability (± spread over repeated runs)"), (6.0, 5.0)),
        Figure(lambda: plots.probability_bars(list(probs), list(probs.values()), list(pred["mc_std"].values())),
               lambda: figures.probability_png(probs, pred["mc_std"])),
        Table(d["readable"]["uncertainty"], ("uncertainty measure", "value"), (9.0, 3.0)),
        *[Text(w, "small") for w in pred["warnings"]],
        Heading("Inputs and heatmaps")]
    imgs = images(rep)
    if imgs:
        blocks.append(Images(imgs))
    inp = d["case"]["inputs"]
    if inp.get("note"):
        words = rep.explanation.note["words"] if rep.explanation is not None and rep.explanation.note else None
        blocks.append(Note(inp["note"]["text"], words))
    if inp.get("metadata"):
        blocks.append(Table([(k, "" if v is None else str(v)) for k, v in inp["metadata"].items()], ("detail", "value")))
    if inp.get("spectrum"):
        s = inp["spectrum"]
        blocks.append(Text(f"Spectrum: {s['points']} points, {s['x_min']:.0f}{DASH}{s['x_max']:.0f}."))
    if ex:
        full = rep.explanation
        if ex.get("modality_shapley"):
            ms = ex["modality_shapley"]
            blocks.append(Figure(lambda: plots.shapley_bars(ms),
                                 lambda: figures.signed_bars_png(list(ms["values"]), list(ms["values"].values()),
                                                                 "What each input contributed (modality Shapley values)",
                                                                 "change in the probability of the class")))
        if full is not None and full.table:
            feats = full.table["features"]
            blocks.append(Figure(lambda: plots.table_attribution_bars(feats, title="Patient details: attributions"),
                                 lambda: figures.signed_bars_png([f"{r['name']} = {r['value']}" for r in feats],
                                                                 [r["integrated_gradients"] for r in feats],
                                                                 "Patient details (integrated gradients)",
                                                                 "push on the class's score")))
        if full is not None and full.spectrum:
            sp = full.spectrum
            blocks.append(Figure(lambda: plots.spectrum_attribution(sp["wavelengths"], sp["spectrum"], sp["smoothed"],
                                                                    title="Spectrum attribution", x_title="wavenumber (cm⁻¹)"),
                                 lambda: figures.spectrum_png(sp), 11.0))
        blocks += [Text(f"{part}: {why}", "small") for part, why in ex.get("skipped", {}).items()]
    return Section("Details", blocks)


def _internals(d: Mapping[str, Any]) -> list[Section]:
    from .. import plots
    from .data import readable_rows

    readable = d["readable"]
    fusion = Section("How the fusion weighed the inputs",
                     [Table(readable["fusion_internals"], ("internal", "value")) if readable["fusion_internals"]
                      else Text("This variant reports no internals.")])
    if readable["mechanisms"]:
        fusion.blocks.append(Bullets([(m["label"], (f" ({m['value']})" if m["value"] else "") + f": {m['sentence']}")
                                      for m in readable["mechanisms"]], "What these internals can be trusted for"))
    out = [fusion]
    if readable["faithfulness"]:
        out.append(Section("Faithfulness of the explanations", [Table(readable["faithfulness"], ("explanation", "scores"))]))
    c = d["comparison"]
    if c:
        votes = ", ".join(f"{k} {v}" for k, v in c["agreement"]["votes"].items())
        blocks: list[Block] = [
            Text(f"{'All variants agree' if c['agreement']['all_agree'] else 'The variants disagree'}: votes {votes}; "
                 f"ensemble disagreement {c['ensemble']['disagreement']:.2f} nats."),
            Table(comparison_rows(c), ("package (fusion variant)", "prediction")),
            Figure(lambda: plots.variant_probabilities(c["columns"], c["target_label"]),
                   lambda: figures.comparison_png(c["columns"], c["target_label"]))]
        if c["explanation_agreement"]:
            blocks.append(Table(readable_rows(c["explanation_agreement"]), ("explanation agreement (mean over pairs)", "value")))
        out.append(Section("Variant comparison", blocks))
    out.append(Section("Model", [Table(model_rows(d["model"])), Text(d["notice"], "notice")]))
    return out


def build_sections(rep: CaseReport) -> list[Section]:
    """The whole report, in reading order; both back-ends draw exactly this."""
    return [*_page_one(rep), _details(rep), *_internals(rep.data)]
