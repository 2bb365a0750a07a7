"""Design stage: a parsed formula applied to data becomes arrays the log-density needs.

The pipeline is formula -> design -> problem -> fit -> result.  This module holds the design
records and :func:`build_design`, one formula applied to data (the response is coded by
:mod:`.response`; lme4's checks are in :mod:`.checks`; a model's formulas are assembled by
:mod:`.assembly`).  The records are plain immutable containers of NumPy arrays (moved to the
device by core) plus the labels needed to name results and to rebuild X/Z for new data.

Nothing here is dense ``n x (levels * q)``: each random-effect term keeps its per-observation
group index and its own ``n x q`` model columns.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from .._lazy import pandas as pd

from ..families import Family, get_family
from ..formula import FormulaError, ParsedFormula, PyExpr, parse_formula
from .checks import single_level_problem
from .frame import DataColumns, complete_rows
from .matrices import FactorCoding, GroupingFactor, ModelMatrix, aliased_columns, evaluate_expr
from .response import level_warnings, response

__all__ = ["RandomTerm", "Design", "DesignSpec", "NewData", "NewTerm", "build_design"]


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
    channel:
        The linear predictor the term feeds (0 unless the model has several, as the
        categorical family has one per non-reference category), or one per column for a
        term merged across predictors by a brms correlation ID.
    id:
        brms's correlation ID of ``(terms | ID | g)``: terms with the same ID and grouping
        factor are modelled as one correlated block, also across linear predictors.
    param_group:
        The group in the term's parameter names (``sd_Subject__Days``): the grouping
        factor's name, as brms and lme4's theta names have it for ``(1 + Days || Subject)``;
        the label (``Subject.1``) only where two terms of one factor share a column name
        (``(1 | g) + (1 | g)``), so that every name stays unique.  Empty: the label.
    """

    group: str
    label: str
    names: tuple[str, ...]
    correlated: bool
    levels: tuple[str, ...]
    group_index: np.ndarray
    Z: np.ndarray
    channel: int | tuple[int, ...] = 0
    id: str | None = None
    param_group: str = ""

    @property
    def column_channels(self) -> tuple[int, ...]:
        """The linear predictor each of the q columns feeds."""
        if isinstance(self.channel, tuple):
            return self.channel
        return (int(self.channel),) * len(self.names)

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
    warnings:
        The messages a fit warns of (a confounded design: rank-deficient columns dropped).
    row_index:
        The data's index labels of the rows used (predictions and simulations of the
        training data carry them, as lme4 keeps row names).
    proportion:
        True when a binomial response was read as a proportion of the weights (lme4's
        ``prop ~ ..., weights = n``): ``y`` and ``trials`` are then counts, and simulated
        responses are given back as proportions.
    n_channels:
        The number of linear predictors (1; the categorical family has one per
        non-reference category, a parameter formula adds one): see :mod:`.channels`.
    fixef_channels:
        The linear predictor each column of X feeds (empty: all feed predictor 0).
    parts:
        A model's assembled design (:func:`jaxglmm.design.assembly.model_design`): the
        designs of its formulas (the main one, then a parameter formula's), from which new
        data are rebuilt the same way; empty for the design of one formula.
    dpar:
        The family parameter the second part's formula models (``"zi"``), else None.
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
    spec: "DesignSpec | None" = field(default=None, repr=False, compare=False)
    warnings: tuple[str, ...] = field(default_factory=tuple)
    proportion: bool = False
    row_index: "pd.Index | None" = field(default=None, repr=False, compare=False)
    n_channels: int = 1
    fixef_channels: tuple[int, ...] = ()
    parts: tuple["Design", ...] = field(default=(), repr=False, compare=False)
    dpar: str | None = None

    @property
    def nobs(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_fixef(self) -> int:
        return int(self.X.shape[1])

    def new_data(self, data: pd.DataFrame, allow_new_levels: bool = True,
                 random_effects: bool = True, labels=None) -> "NewData":
        """Rebuild X, the offset and every term's (group index, Z) for new data.

        See :meth:`DesignSpec.new_data`.
        """
        if self.spec is None:
            raise ValueError("this Design was not made by build_design, so it cannot be "
                             "rebuilt for new data")
        return self.spec.new_data(data, allow_new_levels=allow_new_levels,
                                  random_effects=random_effects, labels=labels)


# ----------------------------------------------------------------------------- new data
@dataclass(frozen=True)
class NewTerm:
    """One random-effect term evaluated on new data.

    Attributes
    ----------
    label: the term's label in the training design (``"Subject"``, ``"Subject.1"``).
    group_index: int32 (n,); -1 where the group level was not in the training data (a
        prediction then uses zero random effects).
    Z: float64 (n, q).
    """

    label: str
    group_index: np.ndarray
    Z: np.ndarray


@dataclass(frozen=True)
class NewData:
    """Model arrays for new data, in the training design's columns and term order.

    Attributes
    ----------
    X: float64 (n, p), columns ``fixef_names``.
    fixef_names: as in the training design.
    offset: float64 (n,).
    terms: one :class:`NewTerm` per training term, same order (empty when built with
        ``random_effects=False``).
    trials: float64 (n,) for a binomial model when the trials columns are in the data, else
        None.
    """

    X: np.ndarray
    fixef_names: tuple[str, ...]
    offset: np.ndarray
    terms: tuple[NewTerm, ...]
    trials: np.ndarray | None = None

    @property
    def nobs(self) -> int:
        return int(self.X.shape[0])


@dataclass(frozen=True)
class RandomTermSpec:
    """How to rebuild one random-effect term: its Z builder and its grouping factor."""

    label: str
    matrix: ModelMatrix
    factor: GroupingFactor
    source: str = ""          # the bar term as written, for messages


@dataclass(frozen=True)
class DesignSpec:
    """What :func:`build_design` learned from the training data, to rebuild arrays.

    Attributes
    ----------
    parsed: the read formula.
    fixed: builder of the full fixed-effect matrix.
    keep: indices of its columns kept in ``Design.X`` (intercept removed for families
        without one, aliased columns dropped).
    offsets: offset expressions, summed.
    terms: per random term, in ``Design.terms`` order.
    weights: the column of prior weights (the trials of a proportion response), or None.
    """

    parsed: ParsedFormula
    fixed: ModelMatrix
    keep: tuple[int, ...]
    offsets: tuple[PyExpr, ...]
    terms: tuple[RandomTermSpec, ...]
    weights: str | None = None

    @property
    def fixef_names(self) -> tuple[str, ...]:
        return tuple(self.fixed.names[i] for i in self.keep)

    def new_data(self, data: pd.DataFrame, allow_new_levels: bool = True,
                 random_effects: bool = True, labels=None) -> NewData:
        """Rebuild the model arrays for ``data``.

        Parameters
        ----------
        data:
            New observations; the response is not needed.
        allow_new_levels:
            When False, a grouping level not seen in training is an error; when True it gets
            group index -1.
        random_effects:
            When False (population-level predictions, lme4's ``re.form = NA``) the random
            terms are skipped, so their columns need not be in ``data``; ``terms`` is empty.
        labels:
            With random effects, the labels of the terms to rebuild (lme4's ``re.form``
            naming some terms); the others read no column and get group index -1 (no
            effect).  None: every term.

        Raises
        ------
        ValueError
            A needed column is missing or has missing values, or a factor has a level that
            was not in the training data (named in the message).
        """
        data = _as_frame(data)
        every = self.terms if random_effects else ()
        random = [t for t in every if labels is None or t.label in labels]
        needed = list(self.fixed.columns) + [n for o in self.offsets for n in o.names]
        needed += [c for t in random for c in t.matrix.columns]
        _require_columns(needed + [c for t in random for c in t.factor.columns], data,
                         self.parsed.formula)
        _check_unique_columns(needed + [c for t in random for c in t.factor.columns], data)
        frame = DataColumns(data.reset_index(drop=True))
        for col in dict.fromkeys(needed):
            if frame[col].isna().any():
                raise ValueError(f"column {col!r} of the new data has missing values")
        X = self.fixed.evaluate(frame)[:, list(self.keep)]
        n = len(frame)
        terms = tuple(NewTerm(t.label, t.factor.index(frame, allow_new_levels),
                              t.matrix.evaluate(frame)) if t in random else
                      NewTerm(t.label, np.full(n, -1, np.int32), np.zeros((n, len(t.matrix.names))))
                      for t in every)
        return NewData(X, self.fixef_names, _offset(self.offsets, frame), terms,
                       self._trials(frame))

    def _trials(self, frame: pd.DataFrame) -> np.ndarray | None:
        response = self.parsed.response
        if response.kind == "plain":
            return None
        exprs = response.exprs if response.kind == "cbind" else response.exprs[1:]
        if not all(n in frame.columns for e in exprs for n in e.names):
            return None
        return sum(evaluate_expr(e, frame) for e in exprs)


# ----------------------------------------------------------------------------- building
def build_design(formula: str, data: pd.DataFrame, family=None, *, categorical=(),
                 levels: dict | None = None, weights: str | None = None) -> Design:
    """Apply a formula to data: the arrays and labels a model needs.

    Parameters
    ----------
    formula:
        An lme4/brms formula, read strictly by :func:`jaxglmm.formula.parse_formula`.
    data:
        A pandas DataFrame (or anything ``pd.DataFrame`` accepts).
    family:
        A :class:`~jaxglmm.families.Family`, a family name, or None (treated as gaussian).
        Used for the response: ``needs_trials`` (binomial), ``has_intercept`` (False for
        cumulative: X gets no intercept column but factors keep reduced-rank coding), and
        ``name`` (bernoulli accepts booleans and two-level factors; cumulative and
        categorical code the response 0..K-1).
    categorical:
        Columns to treat as factors even when numeric.
    levels:
        ``{column: [level, ...]}`` level order; the first level is the reference.  Also
        orders a categorical or ordinal response, and for bernoulli sets which label is the
        failure (first) and the success (second).
    weights:
        Name of a column of prior weights (ones when None).

    Returns
    -------
    Design
        With ``spec`` set, so that ``design.new_data(df)`` rebuilds X and Z for prediction.

    Raises
    ------
    FormulaError
        A malformed formula or a column that is not in ``data``.
    ValueError
        Data that cannot be used: a grouping factor with one level, random effects lme4
        refuses as unidentifiable (too many levels or random effects for the number of
        rows), a used column that appears twice in ``data``, a non-numeric column in
        arithmetic, non-finite transformed values, a response the family cannot take.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"y": [1., 2, 3, 5], "x": [0., 1, 2, 3], "g": list("aabb")})
    >>> d = build_design("y ~ x + (1 | g)", df)
    >>> d.fixef_names, d.terms[0].levels, d.terms[0].group_index.tolist()
    (('Intercept', 'x'), ('a', 'b'), [0, 0, 1, 1])
    """
    parsed, columns = _parse(formula)
    family = _resolve_family(family)
    data = _as_frame(data)
    if len(data) == 0:
        raise ValueError("the data has no rows")
    levels = dict(levels or {})
    categorical = () if categorical is None else \
        (categorical,) if isinstance(categorical, str) else tuple(categorical)
    coding = FactorCoding(frozenset(categorical), levels)
    used = list(columns) + ([weights] if weights else [])
    _require_columns(used, data, formula)
    for option, cols in (("categorical", list(categorical)), ("levels", list(levels))):
        missing = [c for c in cols if c not in data.columns]
        if missing:
            raise ValueError(f"{option} names column(s) not in the data: {missing}")
    _check_unique_columns(used + list(categorical) + list(levels), data)
    series = {c: data[c] for c in dict.fromkeys(used)}     # each column read once
    complete = complete_rows(series, len(data))
    if complete is None:                                   # no row to drop
        row_index, frame, n_dropped = data.index, DataColumns(data, series), 0
    else:
        row_index = data.index[complete]
        frame = DataColumns(data.loc[complete].reset_index(drop=True))
        n_dropped = int((~complete).sum())
    messages: list[str] = []
    if n_dropped:
        messages.append(f"dropped {n_dropped} row(s) with missing values in the columns the "
                        "model uses")
    if len(frame) == 0:
        raise ValueError("no complete rows: every row has a missing value in a used column")

    w = _weights(frame, weights)
    warned: list[str] = []
    y, trials, response_levels = response(parsed, frame, family, levels, messages,
                                          w if weights else None, warned)
    proportion = trials is not None and bool(weights) and trials is w
    n_empty = 0 if trials is None else int(np.count_nonzero(trials == 0))
    if n_empty:
        messages.append(f"{n_empty} rows with zero trials add nothing to the likelihood"
                        if n_empty > 1 else
                        "1 row with zero trials adds nothing to the likelihood")
    if proportion:
        w = np.ones(len(frame))      # the weights were the trials of a proportion response
    has_intercept = family.has_intercept
    fixed = ModelMatrix.fit(parsed.fixed, parsed.intercept or not has_intercept, frame, coding)
    keep = [j for j, name in enumerate(fixed.names) if has_intercept or name != "Intercept"]
    level_notes = level_warnings(fixed, frame, coding)
    warned += level_notes
    messages += level_notes
    aliased = {keep[j] for j in aliased_columns(fixed.values[:, keep])}
    if aliased:
        dropped = [fixed.names[j] for j in sorted(aliased)]
        warned.append(f"fixed-effect model matrix is rank deficient so dropping "
                      f"{len(dropped)} columns: {', '.join(dropped)}")
        messages.append(warned[-1])
        keep = [j for j in keep if j not in aliased]

    term_specs, terms = _random_terms(parsed, frame, coding, family, messages)
    _check_every_column_used(parsed, data, fixed, term_specs)
    offset = _offset(parsed.offsets, frame)
    _check_finite({"response": y, "trials": trials, "offset": offset})

    spec = DesignSpec(parsed, fixed, tuple(keep), parsed.offsets, term_specs, weights)
    return Design(
        y=y, X=np.ascontiguousarray(fixed.values[:, keep]), fixef_names=spec.fixef_names,
        terms=terms, offset=offset, weights=w, trials=trials,
        response_name=parsed.response.text, response_levels=response_levels,
        n_dropped=n_dropped, messages=tuple(messages), spec=spec, warnings=tuple(warned),
        proportion=proportion, row_index=row_index)


@lru_cache(maxsize=256)
def _parse_cached(formula: str) -> tuple[ParsedFormula, tuple[str, ...]]:
    parsed = parse_formula(formula)
    return parsed, parsed.columns


def _parse(formula) -> tuple[ParsedFormula, tuple[str, ...]]:
    """:func:`parse_formula` and the columns the formula reads, once per formula string (a
    ParsedFormula is immutable; reading sleepstudy's formula took 0.08 ms, a tenth of a
    warm ``Model``)."""
    if isinstance(formula, str):
        return _parse_cached(formula)
    parsed = parse_formula(formula)
    return parsed, parsed.columns


def _as_frame(data) -> pd.DataFrame:
    return data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)


def _resolve_family(family) -> Family:
    return family if isinstance(family, Family) else get_family(family or "gaussian")


def _require_columns(columns, data: pd.DataFrame, formula: str) -> None:
    for col in dict.fromkeys(columns):
        if col not in data.columns:
            close = difflib.get_close_matches(col, [str(c) for c in data.columns], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise FormulaError(f"unknown column {col!r}{hint} (in formula {formula!r})")


def _check_unique_columns(columns, data: pd.DataFrame) -> None:
    """A column the model reads must be there once (``data[name]`` of a repeated name is a
    DataFrame, not a column).  A repeated column the model does not read is harmless: it is
    never looked up, so it is not an error."""
    if data.columns.is_unique:
        return
    repeated = set(data.columns[data.columns.duplicated()])
    for col in dict.fromkeys(columns):
        if col in repeated:
            raise ValueError(f"column {col!r} appears twice in the data")


def _offset(offsets, frame: pd.DataFrame) -> np.ndarray:
    total = np.zeros(len(frame))
    for expr in offsets:
        total = total + evaluate_expr(expr, frame)
    return total


def _weights(frame: pd.DataFrame, column: str | None) -> np.ndarray:
    if column is None:
        return np.ones(len(frame))
    w = evaluate_expr(PyExpr.of_column(column), frame)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights column {column!r} must be finite and non-negative")
    if not np.any(w > 0):
        raise ValueError(f"weights column {column!r} is zero in every row: nothing to fit")
    return w


def _check_finite(arrays: dict) -> None:
    for name, values in arrays.items():
        if values is not None and not np.isfinite(values).all():
            raise ValueError(f"the {name} has non-finite values")


def _check_every_column_used(parsed: ParsedFormula, data, fixed, term_specs) -> None:
    """Defense in depth: each column written in the formula must feed a built piece."""
    built = set(parsed.response.names) | set(fixed.columns)
    built |= {n for o in parsed.offsets for n in o.names}
    for t in term_specs:
        built |= set(t.matrix.columns) | set(t.factor.columns)
    for name in parsed.mentioned:
        if name in data.columns and name not in built:
            raise FormulaError(f"column {name!r} is written in the formula but no term uses "
                               "it", parsed.formula)


def _random_terms(parsed, frame, coding, family: Family, messages):
    built = []
    for r in parsed.random:
        matrix = ModelMatrix.fit(r.terms, r.intercept, frame, coding)
        factor, index = GroupingFactor.fit(r.group, frame, coding)
        if len(factor.levels) < 2:
            raise ValueError(single_level_problem(factor.name, r.source, factor.levels[0]))
        built.append((r, matrix, factor, index))
    # lme4's mkReTrms: reorder only if some term has more levels than the one before it,
    # and then by rev(order(nl)), which also reverses ties.
    nl = [len(b[2].levels) for b in built]
    order = list(range(len(built)))
    if any(b > a for a, b in zip(nl, nl[1:])):
        order = list(np.argsort(nl, kind="stable")[::-1])
    seen: dict[str, int] = {}
    named: dict[str, set] = {}       # per grouping factor: the column names given so far
    specs, terms = [], []
    for i in order:
        r, matrix, factor, index = built[i]
        k = seen.get(factor.name, 0)
        seen[factor.name] = k + 1
        label = factor.name if k == 0 else f"{factor.name}.{k}"
        names = named.setdefault(factor.name, set())
        param_group = label if names & set(matrix.names) else factor.name
        names.update(matrix.names)
        specs.append(RandomTermSpec(label, matrix, factor, r.source))
        terms.append(RandomTerm(
            group=factor.name, label=label, names=matrix.names,
            correlated=r.correlated or matrix.values.shape[1] > 1,
            levels=factor.levels, group_index=index,
            Z=np.ascontiguousarray(matrix.values, dtype=np.float64), id=r.id,
            param_group=param_group))
    return tuple(specs), tuple(terms)
