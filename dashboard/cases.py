"""Cases for the Case page: inputs read by core (folders, bundles, demo cases) made the session's case, and the
metadata form checked field by field.

No streamlit here. Reading files is core's (:mod:`core.case_io`, the one reader of case folders and bundles);
validation is core's too (:class:`core.Case`); this module only combines them the way the Case page needs:
every bad field is left out with its sentence and everything else is kept.
"""
from __future__ import annotations

from typing import Any, Mapping

from core import Case, CaseError, Package
from core.case_io import CaseInputs


def case_for(inputs: CaseInputs, pkg: Package | None) -> tuple[Case, dict[str, str]]:
    """The case of ``inputs`` with every input the selected model can't use left out, and the sentence
    for each field left out (``{"image": ..., "metadata.age": ...}``)."""
    case = Case.from_case_inputs(inputs, partial=True)
    return restricted(case, pkg, case.extras.pop("errors", {}))


def restricted(case: Case, pkg: Package | None, errors: Mapping[str, str]) -> tuple[Case, dict[str, str]]:
    """``case.restrict_to(pkg)`` (nothing to do without a model), its sentences added to ``errors``."""
    errors = dict(errors)
    if pkg is not None:
        case, left_out = case.restrict_to(pkg)
        errors.update(left_out)
    return case, errors


# ----------------------------------------------------------------------------------------------------------------------
# the metadata form

def validate_metadata_fields(schema: Any, raw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Each form field checked on its own against the model's schema, so one bad value does not
    drop the others. -> (valid values, {"metadata.<name>": sentence})."""
    valid: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, value in raw.items():
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        try:
            values, _ = schema.validate({name: value})
        except CaseError as e:
            mine = e.errors.get(f"metadata.{name}")
            if mine is not None:
                errors[f"metadata.{name}"] = mine
            else:  # only other (required, still empty) fields complained: this value is fine
                valid[name] = value
            continue
        if values.get(name) is not None:
            valid[name] = values[name]
    return valid, errors
