"""The response coded for the family, and warnings on the fixed effects' factor levels.

:func:`response` reads a formula's left-hand side as the family needs it: numbers, 0/1 (a
bernoulli response may be boolean or a two-level factor), successes and trials (binomial:
``cbind``, ``trials()`` or a proportion with weights), or codes 0..K-1 of an ordinal or
categorical response in level order.  Used by :func:`jaxglmm.design.build_design`.
"""
from __future__ import annotations

import numpy as np
from .._lazy import pandas as pd

from ..families import Family
from ..formula import ParsedFormula
from .collation import r_sort_key
from .matrices import FactorCoding, ModelMatrix, _column_label_codes, evaluate_expr, \
    factor_levels, format_label, is_numeric

__all__ = ["response", "level_warnings"]


def response(parsed: ParsedFormula, frame, family, levels, messages, weights=None,
              warned=None):
    """``(y, trials, response_levels)`` for the family."""
    spec = parsed.response
    name = family.name
    needs_trials = family.needs_trials
    if spec.kind in ("cbind", "trials"):
        if not needs_trials:
            raise ValueError(f"the response {spec.text!r} gives numbers of trials, which only "
                             f"a binomial family takes (family: {name})")
        successes = evaluate_expr(spec.exprs[0], frame)
        other = evaluate_expr(spec.exprs[1], frame)
        trials = successes + other if spec.kind == "cbind" else other
        return successes, trials, None
    expr = spec.exprs[0]
    raw = frame[expr.column] if expr.column is not None else None
    if family.response in ("ordered", "unordered"):
        return _coded_response(raw if raw is not None else
                               pd.Series(evaluate_expr(expr, frame), name=spec.text),
                               family, levels, messages, warned)
    if raw is not None and (not is_numeric(raw) or raw.dtype == bool):
        if family.response != "binary":
            raise ValueError(f"the response {spec.text!r} is not numeric (dtype {raw.dtype}); "
                             f"family {name} needs numbers")
        if raw.dtype == bool:
            y, labels = raw.to_numpy(dtype=float), ("False", "True")
        else:
            given = levels.get(expr.column)
            labels = factor_levels(raw, given, observed_only=given is None)
            if len(labels) != 2:
                raise ValueError(f"a {name} response needs exactly two levels; "
                                 f"{spec.text!r} has {len(labels)}: {list(labels)}")
            y = np.array([format_label(v) == labels[1] for v in raw], dtype=float)
        return y, (np.ones(len(y)) if needs_trials else None), labels
    y = evaluate_expr(expr, frame)
    if needs_trials and weights is not None and np.all((y >= 0) & (y <= 1)):
        # lme4's glmer(prop ~ ..., weights = n, family = binomial): a proportion of n trials
        successes = y * weights
        if np.any(np.abs(successes - np.round(successes)) > 1e-6 * np.maximum(weights, 1.0)):
            raise ValueError(f"binomial proportion {spec.text!r} times the weights is not a "
                             "whole number of successes in every row")
        messages.append(f"binomial response {spec.text!r} read as a proportion of the "
                        "weights (trials), as lme4 does")
        return np.round(successes), weights, None
    if needs_trials:
        if not np.all((y == 0) | (y == 1)):
            raise ValueError(f"a binomial response {spec.text!r} without cbind() or trials() "
                             "must be 0/1; write cbind(successes, failures) or "
                             "successes | trials(n)")
        return y, np.ones(len(y)), None
    return y, None, None


def _absent_levels(series: pd.Series, given, kept) -> list[str]:
    """The declared levels of a factor (``given``, else a Categorical's categories) that
    are not among the ``kept`` (observed) ones."""
    if given is not None:
        declared = [format_label(v) for v in given]
    elif isinstance(series.dtype, pd.CategoricalDtype):
        declared = [format_label(v) for v in series.cat.categories]
    else:
        return []
    kept = set(kept)
    return [lv for lv in dict.fromkeys(declared) if lv not in kept]


def level_warnings(fixed: ModelMatrix, frame: pd.DataFrame, coding: FactorCoding) -> list[str]:
    """Warnings on the fixed effects' factors: a declared level that never occurs (left
    out of the model), and a level seen in one row only (its coefficient rests on that one
    observation)."""
    out = []
    if len(frame) < 2:
        return out
    for state in fixed.states:
        column = state.atom.expr.column
        if not state.is_factor or column is None:
            continue
        series = frame[column]
        absent = _absent_levels(series, coding.given(column), state.levels)
        if absent:
            out.append(f"level(s) {absent} declared for {column!r} never occur in the data: "
                       "left out of the model")
        codes, labels = _column_label_codes(frame, column)
        counts = np.bincount(codes, minlength=len(labels))
        once = sorted((str(labels[k]) for k in np.flatnonzero(counts == 1)), key=r_sort_key)
        if once:
            out.append(f"level(s) {once} of {column!r} occur in one row only: "
                       f"{'its coefficient rests' if len(once) == 1 else 'their coefficients rest'}"
                       " on that one observation")
    return out


def _in_numeric_order(labels) -> bool:
    try:
        values = [float(lv) for lv in labels]
    except ValueError:
        return False
    return values == sorted(values)


def _coded_response(raw: pd.Series, family: Family, levels: dict, messages, warned=None):
    """Ordinal/categorical response: codes 0..K-1 in level order (first = reference).  A
    declared level (``levels=`` or a Categorical's categories) that never occurs is left
    out, with a warning naming it (``warned``)."""
    name = family.name
    given = levels.get(raw.name)
    labels = factor_levels(raw, given)
    absent = _absent_levels(raw, given, labels)
    if absent and warned is not None:
        warned.append(f"the response {raw.name!r} never takes the declared level(s) "
                      f"{absent}: left out, so the {name} model has {len(labels)} "
                      f"categories ({', '.join(labels)})")
        messages.append(warned[-1])
    if (given is None and family.response == "ordered" and not is_numeric(raw)
            and not isinstance(raw.dtype, pd.CategoricalDtype) and not _in_numeric_order(labels)):
        # strings are ordered as R's factor() orders them ("10" < "9"); say so unless that
        # is also the order of the numbers they spell ("1" < ... < "5")
        messages.append(f"response levels ordered as R's factor() orders strings: "
                        f"{' < '.join(labels)}; pass levels={{column: [...]}} to set the order")
    if len(labels) < 2:
        raise ValueError(f"a {name} response needs at least two levels; {raw.name!r} has "
                         f"{list(labels)}")
    lookup = {lv: k for k, lv in enumerate(labels)}
    y = np.array([lookup[format_label(v)] for v in raw.to_numpy()], dtype=float)
    return y, None, labels
