"""Designs with several linear predictors ("channels").

The categorical family has one linear predictor per non-reference category, and a formula
for a family parameter (``zi ~ ...``) adds one.  Every coefficient and every random-effect
column feeds exactly one channel:

* categorical: the fixed-effect columns are repeated per category (named ``category:term``)
  and every random term gets one copy per category.  Copies are uncorrelated, as brms's
  ``(1 | g)``; with brms's ``(1 | ID | g)`` they form one correlated block.
* terms with the same correlation ID and grouping factor (``(1 | p | g)`` in the main formula
  and in ``zi ~ ... + (1 | p | g)``) are merged into one correlated term whose columns keep
  their own channels.

The same functions assemble the training design and rebuild new data for prediction.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .design import Design, RandomTerm


def n_categories(family, design: Design) -> int:
    """Number of linear predictors a categorical response needs (1 otherwise)."""
    return family.n_predictors(design.response_levels)


def expand_categories(design: Design, categories) -> Design:
    """One block of columns and one copy of every term per category."""
    C = len(categories)
    X = np.tile(design.X, (1, C))
    names = tuple(f"{cat}:{n}" for cat in categories for n in design.fixef_names)
    channels = tuple(c for c in range(C) for _ in design.fixef_names)
    terms = tuple(replace(t, names=tuple(f"{cat}:{n}" for n in t.names), channel=c)
                  for t in design.terms for c, cat in enumerate(categories))
    return replace(design, X=X, fixef_names=names, terms=terms, n_channels=C,
                   fixef_channels=channels)


def merge_ids(terms) -> tuple[RandomTerm, ...]:
    """Merge terms sharing a correlation ID and grouping factor into one correlated term."""
    out, slot = [], {}
    for t in terms:
        key = (t.id, t.group) if t.id is not None else None
        if key is None or key not in slot:
            if key is not None:
                slot[key] = len(out)
            out.append(t)
            continue
        k = slot[key]
        first = out[k]
        if not np.array_equal(first.group_index, t.group_index):
            raise ValueError(f"terms with correlation ID {t.id!r} on {t.group!r} do not "
                             "share their grouping levels")
        out[k] = replace(first, names=tuple(first.names) + tuple(t.names), correlated=True,
                         Z=np.concatenate([first.Z, t.Z], axis=1),
                         channel=first.column_channels + t.column_channels)
    return tuple(out)

