"""Designs with several linear predictors ("channels").

The categorical family has one linear predictor per non-reference category, each with its
own fixed effects and random effects.  The design is expanded so that every coefficient and
every random-effect column feeds exactly one channel: the fixed-effect columns are repeated
per category (named ``category:term``), and every random term gets one copy per category
(``(1 | g)`` gives one SD per category, uncorrelated, as brms does without ``|ID|``).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .design import Design, NewData


def n_channels(family, design: Design) -> int:
    if family.name == "categorical":
        if design.response_levels is None or len(design.response_levels) < 2:
            raise ValueError("categorical response needs at least 2 categories")
        return len(design.response_levels) - 1
    return 1


def expand_design(design: Design, categories) -> tuple[Design, tuple[int, ...]]:
    """One block of columns and one copy of every term per category."""
    C = len(categories)
    X = np.tile(design.X, (1, C))
    names = tuple(f"{cat}:{n}" for cat in categories for n in design.fixef_names)
    channels = tuple(c for c in range(C) for _ in design.fixef_names)
    terms = tuple(replace(t, names=tuple(f"{cat}:{n}" for n in t.names), channel=c)
                  for t in design.terms for c, cat in enumerate(categories))
    return replace(design, X=X, fixef_names=names, terms=terms), channels


def expand_new_data(nd: NewData, C: int) -> tuple[np.ndarray, list]:
    """X and per-term (index, Z) for new data, in the expanded design's order."""
    X = np.tile(nd.X, (1, C))
    per_term = [(t.group_index, t.Z) for t in nd.terms for _ in range(C)]
    return X, per_term
