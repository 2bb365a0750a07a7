"""Design stage: a parsed formula applied to data becomes arrays the log-density needs.

The pipeline is formula -> design -> log-density -> fit -> result.  This module holds the
design records.  They are plain immutable containers of NumPy arrays (moved to the device by
the fitters) plus the labels needed to name results and to rebuild X/Z for new data.

Nothing here is dense ``n x (levels * q)``: each random-effect term keeps its per-observation
group index and its own ``n x q`` model columns.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RandomTerm:
    """One random-effect term, e.g. ``(1 + Days | Subject)``.

    Attributes
    ----------
    group:
        Name of the grouping factor as reported in varcorr (``"Subject"``,
        ``"batch:cask"``).  Terms from ``(x || g)`` share the grouping factor but are
        separate terms (lme4 reports them as ``g`` and ``g.1``); ``group`` stays ``"g"``
        and ``label`` carries the suffix.
    label:
        Unique label of the term for varcorr (``"Subject"``, ``"Subject.1"``).
    names:
        Names of the q model columns (``("Intercept", "Days")``).
    correlated:
        True for a full q x q covariance (``|``), False for a diagonal one (``||`` yields
        q = 1 terms anyway, but ``(0 + a + b || g)`` style diagonal blocks are allowed).
    levels:
        Level labels of the grouping factor, in index order.
    group_index:
        int32 array (n,), index into ``levels`` for each observation.
    Z:
        float64 array (n, q), the term's model columns.
    """

    group: str
    label: str
    names: tuple[str, ...]
    correlated: bool
    levels: tuple[str, ...]
    group_index: np.ndarray
    Z: np.ndarray

    @property
    def q(self) -> int:
        return len(self.names)

    @property
    def n_levels(self) -> int:
        return len(self.levels)


@dataclass(frozen=True)
class Design:
    """Everything a family's log-density needs, for one dataset.

    Attributes
    ----------
    y:
        float64 (n,) response.  bernoulli: 0/1; binomial: successes; cumulative and
        categorical: integer codes 0..K-1 stored as float.
    trials:
        float64 (n,) number of trials for binomial, else None.
    X:
        float64 (n, p) fixed-effect model matrix.
    fixef_names:
        Column names of X, formulae's conventions (``Intercept``, ``period[2]``, ``a:b``).
    offset, weights:
        float64 (n,).  Zeros / ones when not given.
    terms:
        Random-effect terms, ordered as lme4 orders them (decreasing number of levels,
        stable).
    response_name:
        Name of the response expression.
    response_levels:
        Labels of a categorical/ordinal response (in code order), or for bernoulli the
        (failure, success) labels when the response was not numeric 0/1; else None.
    n_dropped:
        Rows dropped because a used column had a missing value.
    messages:
        Notes produced while building (dropped rows, dropped rank-deficient columns...).
    """

    y: np.ndarray
    X: np.ndarray
    fixef_names: tuple[str, ...]
    terms: tuple[RandomTerm, ...]
    offset: np.ndarray
    weights: np.ndarray
    trials: np.ndarray | None = None
    response_name: str = "y"
    response_levels: tuple[str, ...] | None = None
    n_dropped: int = 0
    messages: tuple[str, ...] = field(default_factory=tuple)

    @property
    def nobs(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_fixef(self) -> int:
        return int(self.X.shape[1])
