"""New data in a model's design: what predictions and simulations read.

:func:`new_design` rebuilds each formula's X, offset and random terms for new data
(:meth:`.design.DesignSpec.new_data`) and assembles them as the training design was
(:func:`.assembly.assemble`), so a prediction sees the same columns, linear predictors and
factor order as the fit.  :func:`used_columns` and :func:`group_labels` say which columns a
prediction reads and which levels new data hold.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from .._lazy import pandas as pd

from .assembly import assemble
from .design import Design

__all__ = ["group_labels", "new_design", "used_columns"]


def parts(design: Design) -> tuple[Design, ...]:
    """The designs of a model's formulas (the design itself when it has one formula)."""
    return design.parts or (design,)


def selected(random_effects, part: int, label: str) -> bool:
    """Whether the term ``label`` of formula ``part`` is among ``random_effects``: True or
    ``"all"`` (every term), False or None (none), or a set of (part, label) from
    :func:`.selection.re_terms`."""
    if random_effects is True or random_effects == "all":
        return True
    if not random_effects:
        return False
    return (part, label) in random_effects


def new_design(design: Design, data: pd.DataFrame, allow_new_levels: bool = True,
               random_effects=True) -> Design:
    """``design`` (a model's assembled design) rebuilt for ``data``: X, offset, trials and,
    with ``random_effects``, every term's group index and Z, in the model's (possibly
    expanded) columns; y and the weights are the training ones, not the new data's.
    ``random_effects`` may be a set of terms from :func:`.selection.re_terms`: only their
    columns are read, the others get no effect (index -1); False or None: no terms."""
    def rebuilt(part: Design, k: int) -> Design:
        labels = None if random_effects in (True, "all") or not random_effects else \
            frozenset(label for p, label in random_effects if p == k)
        nd = part.new_data(data, allow_new_levels=allow_new_levels,
                           random_effects=bool(random_effects), labels=labels)
        terms = tuple(replace(t, group_index=n.group_index, Z=n.Z)
                      for t, n in zip(part.terms, nd.terms)) if random_effects else ()
        return replace(part, X=nd.X, offset=nd.offset, terms=terms, trials=nd.trials)

    rebuilt_parts = tuple(rebuilt(p, k) for k, p in enumerate(parts(design)))
    out = assemble(rebuilt_parts, design.dpar, 1 if design.dpar else design.n_channels)
    weights = design.spec.weights if design.spec is not None else None
    if design.proportion and weights in data:      # prop ~ ..., weights = trials
        out = replace(out, trials=np.asarray(data[weights], float))
    return out


def used_columns(design: Design, random_effects=True) -> list[str]:
    """The data columns a prediction reads: fixed effects, offsets and the random terms
    ``random_effects`` names (as in :func:`new_design`) with their grouping factors."""
    cols = []
    for k, part in enumerate(parts(design)):
        spec = part.spec
        cols += list(spec.fixed.columns) + [n for o in spec.offsets for n in o.names]
        for t in spec.terms:
            if selected(random_effects, k, t.label):
                cols += list(t.matrix.columns) + list(t.factor.columns)
    return list(dict.fromkeys(cols))


def group_labels(design: Design, data: pd.DataFrame, factors) -> list[np.ndarray]:
    """Each grouping factor's level labels in ``data``, for ``factors`` (the random-effect
    structure's, :attr:`jaxglmm.core.restructure.ReStructure.factors`) in their order."""
    by_name = {t.factor.name: t.factor for p in parts(design) for t in p.spec.terms}
    frame = data.reset_index(drop=True)
    return [by_name[f.group].labels(frame) for f in factors]
