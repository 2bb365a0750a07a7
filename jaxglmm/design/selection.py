"""lme4's ``re.form``: which random effects a prediction conditions on.

:func:`re_terms` reads ``re_form`` against a model's random terms, :func:`re_masks` turns
the chosen terms into a 0/1 mask over each grouping factor's columns.
"""
from __future__ import annotations

import numpy as np
from .._lazy import pandas as pd

from ..formula import parse_formula, term_key
from .design import Design
from .newdata import parts

__all__ = ["re_masks", "re_selection", "re_terms"]


def re_terms(design: Design, re_form):
    """Which random-effect terms of ``design`` (a model's assembled design) a prediction
    conditions on, as lme4's ``re.form``: ``"all"`` for None; None (no random effects) for
    ``"~0"``, ``NA`` or ``"~1"``; for a formula of random terms, e.g. ``"~(1 | LOCATION)"``,
    the set of those terms as (formula part, label): part 1 is a parameter formula's
    (``zi ~ ...``)."""
    if re_form is None:
        return "all"
    if re_form is pd.NA or (isinstance(re_form, float) and np.isnan(re_form)):
        return None
    if not isinstance(re_form, str):
        raise TypeError(f"re_form must be None, NA or a formula string, got {re_form!r}")
    text = re_form.strip()
    if text in ("NA", "0", "~0", "~ 0") or text.replace(" ", "") in ("~0", "~1-1", "~-1+1"):
        return None
    if not text.startswith("~"):
        raise ValueError(f"re_form must be a one-sided formula such as '~(1 | g)', "
                         f"'~0' or None; got {re_form!r}")
    parsed = parse_formula("re_form_response " + text)
    if parsed.fixed or parsed.offsets:
        raise ValueError(f"re_form {re_form!r} may hold only random-effect terms "
                         "('(... | group)'), as lme4's re.form")
    if not parsed.random:
        return None
    key = lambda terms, intercept, group: (tuple(group), bool(intercept),
                                           frozenset(term_key(t) for t in terms))
    specs = [p.spec for p in parts(design)]
    # terms are told apart by (formula, label): a parameter formula's terms (part 1, the
    # model's linear predictor 1) may carry the same labels as the main formula's
    labels = {}
    for k, spec in enumerate(specs):
        for t in spec.terms:
            labels.setdefault(key(t.matrix.terms, t.matrix.intercept, t.factor.columns),
                              set()).add((k, t.label))
    chosen = set()
    for r in parsed.random:
        found = labels.get(key(r.terms, r.intercept, r.group))
        if not found:
            known = ", ".join(term.source for spec in specs for term in spec.parsed.random)
            raise ValueError(f"re_form term {r.source} is not a random-effect term of "
                             f"the model (its terms: {known})")
        chosen |= found
    return frozenset(chosen)


def re_masks(design: Design, factors, chosen) -> tuple | None:
    """Per grouping factor of ``factors`` (the random-effect structure's,
    :attr:`jaxglmm.core.restructure.ReStructure.factors`) a 0/1 mask over its columns: those
    of the terms ``chosen`` (:func:`re_terms`) are 1; None when no random effect is
    chosen."""
    if chosen is None:
        return None
    if chosen == "all":
        return tuple(np.ones(f.q) for f in factors)
    two_parts = len(parts(design)) > 1
    masks = []
    for f in factors:
        label = [t.label for t in f.terms for _ in range(t.q)]
        masks.append(np.array([1.0 if (int(two_parts and c == 1), lab) in chosen else 0.0
                               for c, lab in zip(f.channels, label)]))
    return tuple(masks)


def re_selection(design: Design, factors, re_form) -> tuple | None:
    """:func:`re_masks` of :func:`re_terms`."""
    return re_masks(design, factors, re_terms(design, re_form))
