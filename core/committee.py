"""The suite's other fusion variants as a second opinion on one case (issue 14 §4).

The signal is the committee vote: the share of the suite's other fused variants (more than one modality, no
dual-expert encoder) whose predicted class differs from the selected variant's. The variants share the
frozen encoders, so the vote costs one fusion + head pass per variant on ``core.compare``'s shared-encoder
path (``compare_variants(..., explain=False)``); nothing here runs a model itself.

``<suite>/committee.json`` (written by ``scripts/uncertainty_signals.py --write-committee``) holds the variant
the vote threshold was fitted for (on a calibration set), the committee, the threshold and what the vote did
on an evaluation set none of the models saw. The refer flag is given only when that file applies: the same
variant, the same committee. Where it applies, the vote is the Prediction page's referral signal
(``fitted_spec`` + ``referral_signal``: the flag, the sentence naming the signal and its measured AUROC, the
package's own entropy flag as secondary information, or the fallback to that flag with the reason).
Research use only, not a medical device.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .case import Case
from .compare import compare_variants
from .errors import FusionLensError
from .package import Package

COMMITTEE_FILE = "committee.json"
SIGNAL = "committee_vote"


class CommitteeError(FusionLensError, ValueError):
    """A committee.json that cannot be used (one sentence)."""


def _ci(entry: Any) -> tuple[float, tuple[float, float]] | None:
    if not isinstance(entry, Mapping):
        return None
    v, ci = entry.get("value"), entry.get("ci95")
    if not isinstance(v, (int, float)) or not isinstance(ci, (list, tuple)) or len(ci) != 2 \
            or not all(isinstance(c, (int, float)) for c in ci):
        return None
    return float(v), (float(ci[0]), float(ci[1]))


@dataclass(frozen=True)
class CommitteeSpec:
    """A validated committee.json."""
    path: Path
    variant: str                               # the package folder the threshold was fitted for
    committee: tuple[str, ...]                 # the other variants' package folders
    min_disagreeing: int                       # refer when at least this many of them disagree
    threshold: float                           # = min_disagreeing / len(committee)
    calibration_referred_fraction: float | None
    calibration: str                           # what the threshold was fitted on
    evaluation: str                            # what the figures below were measured on
    cohort: str
    auroc: dict[str, tuple[float, tuple[float, float]]]   # signal -> (value, 95% interval) on the evaluation set
    chance: float = 0.5
    at_threshold: dict[str, Any] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)   # package folder -> weights it was fitted with (may be empty)

    def fitted_with(self, pkg: Package) -> bool:
        """Whether ``pkg`` holds the weights the threshold was fitted with (True when the file does not say)."""
        want = self.sha256.get(folder(pkg))
        return want is None or want == pkg.sha256

    def sentence(self) -> str:
        """One plain sentence: what the signal is and how well it caught errors on data the models never saw."""
        v, (lo, hi) = self.auroc[SIGNAL]
        return (f"The second opinion counts how many of the suite's other fusion variants (same encoders, different "
                f"fusion) predict a different class; on {self.cohort} cases none of the models had seen "
                f"({self.evaluation}), it separated this model's wrong predictions from its right ones with an "
                f"AUROC of {v:.2f} (95% interval {lo:.2f}–{hi:.2f}; {self.chance:.1f} is chance).")

    def lines(self) -> list[str]:
        """The measured error-detection AUROC of every signal in the file, best first."""
        return [f"{k}: {v:.3f} (95% interval {lo:.3f}–{hi:.3f})"
                for k, (v, (lo, hi)) in sorted(self.auroc.items(), key=lambda kv: -kv[1][0])]


def read_committee(suite_dir: str | Path) -> CommitteeSpec | None:
    """``<suite_dir>/committee.json`` validated; None when there is none; CommitteeError when it is malformed."""
    path = Path(suite_dir) / COMMITTEE_FILE
    if not path.is_file():
        return None

    def bad(why: str) -> CommitteeError:
        return CommitteeError(f"{path} cannot be used ({why}); re-create it with "
                              "scripts/uncertainty_signals.py --write-committee.")

    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise bad(f"not readable JSON: {type(e).__name__}") from None
    if not isinstance(raw, dict):
        raise bad("not a JSON object")
    variant, members = raw.get("variant"), raw.get("committee")
    if not isinstance(variant, str) or not variant:
        raise bad("no 'variant'")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) and m for m in members) \
            or len(set(members)) != len(members) or variant in members:
        raise bad("'committee' must list the other variants' folders, each once")
    th = raw.get("threshold")
    if not isinstance(th, dict):
        raise bad("no 'threshold'")
    k, of = th.get("min_disagreeing"), th.get("of")
    if not isinstance(k, int) or isinstance(k, bool) or not isinstance(of, int) or of != len(members) or not 1 <= k <= of:
        raise bad("'threshold' must give min_disagreeing between 1 and 'of' = the committee's size")
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    ev = raw.get("evaluation")
    if not isinstance(ev, dict) or not isinstance(ev.get("error_detection_auroc"), dict):
        raise bad("no evaluation 'error_detection_auroc'")
    auroc = {name: _ci(e) for name, e in ev["error_detection_auroc"].items()}
    if auroc.get(SIGNAL) is None:
        raise bad(f"no '{SIGNAL}' AUROC with a 95% interval")
    chance = ev.get("error_detection_chance", 0.5)
    shas = raw.get("package_sha256", {})
    if not isinstance(shas, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in shas.items()):
        raise bad("'package_sha256' must map package folders to sha256 strings")
    crf = th.get("calibration_referred_fraction")
    return CommitteeSpec(
        path=path, variant=variant, committee=tuple(members), min_disagreeing=k, threshold=k / of,
        calibration_referred_fraction=float(crf) if isinstance(crf, (int, float)) else None,
        calibration=str(data.get("calibration", "a calibration set")),
        evaluation=str(data.get("evaluation", "an evaluation set")), cohort=str(data.get("cohort", "held-out")),
        auroc={n: a for n, a in auroc.items() if a is not None},
        chance=float(chance) if isinstance(chance, (int, float)) else 0.5,
        at_threshold=dict(ev.get("at_threshold") or {}), sha256=dict(shas))


def is_member(pkg: Package) -> bool:
    """A committee member: a fused variant (more than one modality) without a dual-expert encoder."""
    return len(pkg.modalities) > 1 and not any(getattr(pkg.model.encoders[m], "dual_expert", False)
                                               for m in pkg.modalities)


def folder(pkg: Package) -> str:
    return Path(pkg.path).name


def refer_decision(disagreeing: int, members: Sequence[str], chosen: str,
                   spec: CommitteeSpec | None) -> tuple[bool | None, str | None]:
    """(refer flag, or None when the fitted threshold does not apply; why it does not)."""
    if spec is None:
        return None, "This suite has no committee.json, so no threshold was fitted: the vote is shown without a refer flag."
    if spec.variant != chosen:
        return None, (f"The vote threshold was fitted for the variant '{spec.variant}', not '{chosen}': "
                      "the vote is shown without a refer flag.")
    if sorted(members) != sorted(spec.committee):
        return None, ("The variants available here differ from the committee the threshold was fitted for "
                      f"({', '.join(spec.committee)}): the vote is shown without a refer flag.")
    return disagreeing >= spec.min_disagreeing, None


@dataclass
class CommitteeVote:
    chosen: str                                # the selected package's folder
    label: str                                 # its predicted class
    members: list[str]                         # the other variants that voted
    disagreeing: dict[str, str]                # variant folder -> its (different) label
    refer: bool | None                         # None: no threshold applies (see ``note``)
    threshold: float | None
    min_disagreeing: int | None
    note: str | None
    sentence: str | None                       # what the signal is and how well it caught errors (from the file)
    lines: list[str]                           # the measured AUROC of every signal in the file
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def k(self) -> int:
        return len(self.disagreeing)

    @property
    def share(self) -> float:
        return self.k / self.n if self.n else 0.0

    def headline(self) -> str:
        return f"{self.k} of {self.n} other variants disagree"


def committee_vote(packages: Sequence[Package], case: Case, chosen: Package,
                   spec: CommitteeSpec | None = None, prediction: Any | None = None) -> CommitteeVote:
    """The vote of ``packages`` (the suite's packages; the non-members and ``chosen`` itself are left out)
    on ``case`` against ``chosen``'s label, on the shared-encoder path of ``core.compare`` (explain=False).
    With a ``spec`` that applies (same variant, same committee) the refer flag is decided by its threshold.
    ``prediction``: ``chosen``'s prediction of ``case``, already made (the label the vote is counted
    against; ``chosen`` then does not run again); else ``chosen`` runs with the others."""
    others = [p for p in packages if is_member(p) and folder(p) != folder(chosen)
              and (spec is None or spec.variant != folder(chosen) or folder(p) in spec.committee)]
    # a member retrained since the threshold was fitted does not vote under it (it is reported as skipped)
    stale = {folder(p): "retrained since the threshold was fitted" for p in others
             if spec is not None and spec.variant == folder(chosen) and not spec.fitted_with(p)}
    others = [p for p in others if folder(p) not in stale]
    if not others:
        raise CommitteeError("There are no other fusion variants of this suite to give a second opinion.")
    comp = compare_variants(others if prediction is not None else [chosen, *others], case, explain=False)
    cols = {folder(c.package): c.prediction for c in comp.columns}
    if prediction is None and folder(chosen) not in cols:
        raise CommitteeError("The selected model cannot read this case's inputs, so there is no vote to compare.")
    label = prediction.label if prediction is not None else cols[folder(chosen)].label
    members = [folder(p) for p in others if folder(p) in cols]
    disagreeing = {m: cols[m].label for m in members if cols[m].label != label}
    skipped = {**stale, **{folder(p): comp.skipped[p.name] for p in others if p.name in comp.skipped}}
    refer, note = refer_decision(len(disagreeing), members, folder(chosen), spec)
    applies = refer is not None
    return CommitteeVote(
        chosen=folder(chosen), label=label, members=members, disagreeing=disagreeing, refer=refer,
        threshold=spec.threshold if applies else None, min_disagreeing=spec.min_disagreeing if applies else None,
        note=note, sentence=spec.sentence() if spec is not None and applies else None,
        lines=spec.lines() if spec is not None else [], skipped=skipped)


# ---- which signal raises the Prediction page's referral flag --------------------------------------------------------
OWN_SIGNAL = "entropy_head_mc"   # the package's own referral signal (head MC-dropout entropy), as committee.json names it


def fitted_spec(pkg: Package) -> tuple[CommitteeSpec | None, str | None]:
    """The committee.json of ``pkg``'s suite when it was fitted for ``pkg`` (the vote is then its referral
    signal): (spec, None). (None, why) when that file names ``pkg`` but cannot be used; (None, None) when there
    is no file or it was fitted for another variant (the package's own flag applies, nothing is said)."""
    suite = Path(pkg.path).parent
    try:
        spec = read_committee(suite)
    except CommitteeError as e:
        try:
            named = json.loads((suite / COMMITTEE_FILE).read_text()).get("variant")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            named = None
        return None, (str(e) if named == folder(pkg) else None)
    if spec is None or spec.variant != folder(pkg):
        return None, None
    if not spec.fitted_with(pkg):
        return None, "this model was retrained after the vote's threshold was fitted for it"
    return spec, None


@dataclass(frozen=True)
class Referral:
    """The referral flag the Prediction page shows and the sentences around it."""
    signal: str                  # SIGNAL (the committee vote) or OWN_SIGNAL (the package's own entropy flag)
    refer: bool
    flag: str                    # the flag in words (markdown)
    sentence: str | None         # what raised the flag and how well it caught errors; None: the package's own flag as always
    secondary: str | None = None  # the model's own uncertainty, when the vote decides
    fallback: str | None = None   # why the vote fitted for this package was not used

    @property
    def curve_note(self) -> str | None:
        """Said beside the package's accuracy-vs-referred curve (an entropy curve) when the vote raises the flag."""
        if self.signal != SIGNAL:
            return None
        return "This curve follows the model's own uncertainty, not the committee vote that raises the flag above."


def _own_flag(pred: Any) -> str:
    r = pred.referral
    if pred.refer:
        return (f"**Advise re-check by a clinician.** This case's uncertainty ({r['value']:.2f}) is above the "
                f"package's referral threshold ({r['threshold']:.2f}).")
    return (f"No referral flag: the uncertainty ({r['value']:.2f}) is below the package's referral threshold "
            f"({r['threshold']:.2f}).")


def _own(pred: Any) -> str:
    r = pred.referral
    return (f"normalised entropy {r['value']:.2f} is {'above' if pred.refer else 'not above'} "
            f"its threshold {r['threshold']:.2f}")


def referral_signal(pred: Any, spec: CommitteeSpec | None, vote: CommitteeVote | None = None,
                    failure: str | None = None) -> Referral:
    """Which flag applies to ``pred`` (a ``core.package.Prediction``): the committee vote's when ``spec`` (from
    ``fitted_spec``) was fitted for this package and ``vote`` applied its threshold; else the package's own
    entropy flag, with one sentence saying why the vote was not used when it should have been (``failure``:
    the vote could not be computed, or ``fitted_spec``'s reason)."""
    if spec is not None and vote is not None and vote.refer is not None:
        v, (lo, hi) = spec.auroc[SIGNAL]
        sentence = (f"The referral flag comes from the committee vote (raised when at least {spec.min_disagreeing} "
                    f"of the {len(spec.committee)} other fusion variants predict another class), which on "
                    f"{spec.cohort} cases none of the models had seen ({spec.evaluation}) separated this model's "
                    f"wrong predictions from its right ones with an AUROC of {v:.3f} (95% bootstrap interval "
                    f"{lo:.3f}–{hi:.3f}; {spec.chance:.1f} is chance).")
        own = spec.auroc.get(OWN_SIGNAL)
        measured = (f" (its AUROC on the same cases: {own[0]:.3f}, {own[1][0]:.3f}–{own[1][1]:.3f})"
                    if own is not None else "")
        secondary = (f"The model's own uncertainty says **{'refer' if pred.refer else 'no referral flag'}**: its "
                     f"{_own(pred)}{measured}.")
        counted = (f"{vote.k} of the {vote.n} other fusion variants predict another class (the flag is raised from "
                   f"{vote.min_disagreeing}).")
        flag = f"**Advise re-check by a clinician.** {counted}" if vote.refer else f"No referral flag: {counted}"
        return Referral(SIGNAL, bool(vote.refer), flag, sentence, secondary)
    if spec is None and failure is None:
        return Referral(OWN_SIGNAL, bool(pred.refer), _own_flag(pred), None)
    if failure is None and vote is not None and spec is not None:
        absent = [m for m in spec.committee if m not in vote.members]
        failure = (f"{len(absent)} of the {len(spec.committee)} variants it was fitted for did not vote here: "
                   + ", ".join(f"{m} ({vote.skipped[m]})" if m in vote.skipped else f"{m} (not in this suite)"
                               for m in absent))
        if not absent:
            failure = f"the variants that voted here are not the {len(spec.committee)} it was fitted for"
    why = (failure or "no vote was computed").rstrip(".")
    return Referral(OWN_SIGNAL, bool(pred.refer), _own_flag(pred),
                    f"The committee vote fitted for this model could not be used ({why}), so the flag comes from the "
                    "model's own uncertainty (head MC-dropout entropy).", fallback=why)


# ---- one decision for every surface: the Prediction page, the case report, ``python -m core predict`` -----------------

def suite_loader(pkg: Package) -> Callable[[str], Package | None]:
    """Loads a committee member by its folder name from ``pkg``'s suite folder (None: not in this suite)."""
    from .package import load_package

    suite = Path(pkg.path).parent

    def load(name: str) -> Package | None:
        path = suite / name
        return load_package(path) if (path / "config.json").is_file() else None

    return load


def vote_for(pkg: Package, case: Case, spec: CommitteeSpec, prediction: Any | None = None,
             load: Callable[[str], Package | None] | None = None) -> CommitteeVote:
    """The committee vote of ``spec`` (fitted for ``pkg``) on ``case``: only the members it names are loaded
    (``load``: folder name -> Package or None when the suite lacks it; default: from ``pkg``'s suite folder).
    A member that cannot be loaded raises its error (FusionLensError: one sentence)."""
    load = load or suite_loader(pkg)
    members = [m for m in (load(name) for name in spec.committee) if m is not None]
    return committee_vote(members, case, pkg, spec, prediction=prediction)


@dataclass(frozen=True)
class ReferralDecision:
    """The referral flag that applies to one prediction, with the vote behind it (None: not computed)."""
    referral: Referral
    vote: CommitteeVote | None = None
    own_refer: bool | None = None       # the package's own (entropy) flag, for the record

    def to_dict(self) -> dict[str, Any]:
        r, v = self.referral, self.vote
        out: dict[str, Any] = {"signal": r.signal, "refer": r.refer, "flag": r.flag.replace("**", ""),
                               "sentence": r.sentence, "secondary": (r.secondary or "").replace("**", "") or None,
                               "fallback": r.fallback, "own_refer": self.own_refer}
        if v is not None and r.signal == SIGNAL:
            out["vote"] = {"disagreeing": v.k, "of": v.n, "min_disagreeing": v.min_disagreeing,
                           "labels": dict(v.disagreeing), "label": v.label}
        return out


def decide_referral(pkg: Package, case: Case, prediction: Any,
                    load: Callable[[str], Package | None] | None = None) -> ReferralDecision:
    """Which referral flag applies to ``prediction`` of ``case`` by ``pkg``: the committee vote where
    ``committee.json`` was fitted for ``pkg`` (its members loaded with ``load``, see ``vote_for``), else the
    package's own entropy flag; a vote that cannot be computed falls back to the own flag with the reason.
    The vote is counted against ``prediction``'s label, or, for a test-time-augmented prediction (the vote's
    threshold was fitted on plain ones), against ``pkg``'s plain prediction run with the committee. The same
    decision as the Prediction page."""
    spec, failure = fitted_spec(pkg)
    vote = None
    if spec is not None:
        plain = "tta_spread" not in (getattr(prediction, "uncertainty", None) or {})
        try:
            vote = vote_for(pkg, case, spec, prediction if plain else None, load)
        except FusionLensError as e:
            failure = str(e)
    return ReferralDecision(referral_signal(prediction, spec, vote, failure), vote, bool(prediction.refer))


def referral_line(decision: ReferralDecision) -> str:
    """The referral flag in one line for a terminal: ``REFER`` / ``no referral flag``, naming the signal."""
    r, v = decision.referral, decision.vote
    if r.signal == SIGNAL and v is not None:
        return (f"{'REFER' if r.refer else 'no referral flag'} (committee vote: {v.k} of {v.n} other fusion variants "
                f"predict another class; raised from {v.min_disagreeing})")
    line = f"{'REFER' if r.refer else 'no referral flag'} (the model's own uncertainty)"
    return line + (f"; the committee vote fitted for this model could not be used: {r.fallback}" if r.fallback else "")
