"""The R reference fits (copied from the project's shared reference folder into tests/data)
and how to run the same model in jaxglmm.  Shared by the tests and scripts/compare_reference.py."""
from __future__ import annotations

import json
import re
from pathlib import Path

DATA = Path(__file__).parent / "data"

# case -> (dataset, family, method, options, factor columns that R names like period2)
CASES = {
    "sleepstudy_reml": ("sleepstudy", "gaussian", "reml", {}, ()),
    "sleepstudy_ml": ("sleepstudy", "gaussian", "ml", {}, ()),
    "sleepstudy_uncorrelated": ("sleepstudy", "gaussian", "reml", {}, ()),
    "penicillin_crossed": ("penicillin", "gaussian", "reml", {}, ()),
    "pastes_nested": ("pastes", "gaussian", "reml", {}, ()),
    "cbpp_laplace": ("cbpp", "binomial", "laplace", {}, ("period",)),
    "cbpp_agq25": ("cbpp", "binomial", "agq", {"agq_points": 25}, ("period",)),
    "grouseticks_poisson": ("grouseticks", "poisson", "laplace", {}, ("YEAR",)),
    "classroom_reading": ("classroom", "gaussian", "reml", {}, ()),
    "classroom_math_better": ("classroom", "binomial", "laplace", {}, ()),
}


def load_reference(case: str) -> dict:
    return json.loads((DATA / f"{case}.json").read_text())


def r_name(name: str, factors=()) -> str:
    """R's coefficient name -> formulae's (``(Intercept)`` -> ``Intercept``, ``period2`` ->
    ``period[2]``)."""
    if name == "(Intercept)":
        return "Intercept"
    parts = []
    for part in name.split(":"):
        for f in factors:
            m = re.fullmatch(rf"{re.escape(f)}(.+)", part)
            if m:
                part = f"{f}[{m.group(1)}]"
                break
        parts.append(part)
    return ":".join(parts)


def r_group(group: str) -> str:
    """lme4 names the nested group ``cask:batch``; docs/INTERFACE.md names it ``batch:cask``."""
    if ":" in group:
        return ":".join(reversed(group.split(":")))
    return group
