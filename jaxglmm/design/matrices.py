"""Terms: the atoms a formula is made of, and how they become model-matrix columns.

The formula reader (:mod:`jaxglmm.formula`) produces :class:`Atom` and :class:`PyExpr`
records; this module evaluates them on data.  It is the bridge between a :class:`~jaxglmm.formula.ParsedFormula` and NumPy arrays.  Every atom of a term is
evaluated here (with its training state kept for new data), because formulae 0.9 gets some
atoms wrong:

* ``scale(x)`` divides by the population SD; R divides by the sample SD (``ddof=1``).
* ``I(-x**2)`` evaluates to ``x**2``; its own expression parser drops the unary minus.
* An unordered pandas Categorical is re-sorted alphabetically, losing the level order.

The atoms' values are then combined into columns (treatment coding, interactions, column
names) by :mod:`.coding` in NumPy, as formulae combines them.  What :mod:`.coding` does not
reproduce (``poly()``, a factor with one level, terms formulae would add) is handed to
:mod:`formulae` as plain placeholder columns: formulae only sees names, ordered categoricals
and ``poly()``, and the placeholders are renamed back in the column labels.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from .._lazy import pandas as pd

from ..formula.terms import Atom, PyExpr, Term, column_name, term_key
from .coding import ColumnPlan, build_columns, plan_columns
from .collation import r_sort_key
from .frame import DataColumns, as_columns, is_numeric, numeric_values

__all__ = ["PyExpr", "Atom", "Term", "term_key", "FactorCoding", "ModelMatrix",
           "GroupingFactor", "evaluate_expr", "format_label", "factor_levels",
           "aliased_columns"]

_FUNCTIONS = {"log": np.log, "log2": np.log2, "log10": np.log10, "log1p": np.log1p,
              "exp": np.exp, "expm1": np.expm1, "sqrt": np.sqrt, "abs": np.abs,
              "I": lambda v: v}
_BINOPS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply,
           ast.Div: np.divide, ast.Pow: np.power}
_PLACEHOLDER = "JGv{}Z"
_PLACEHOLDER_RE = re.compile(r"poly\(JGv(\d+)Z[^)]*\)(?:\[(\d+)\])?|JGv(\d+)Z")


# ----------------------------------------------------------------------------- values
def format_label(value) -> str:
    """A level label as R prints it: ``2`` not ``2.0``, strings unchanged."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value)


def _numeric_column(frame, name: str) -> np.ndarray:
    if isinstance(frame, DataColumns):
        return frame.numeric(name)
    return numeric_values(frame[name], name)


@lru_cache(maxsize=4096)
def _tree(expr: PyExpr) -> ast.Expression:
    """An expression's parsed code, parsed once (``PyExpr.tree`` parses on every call)."""
    return expr.tree


@lru_cache(maxsize=4096)
def atom_key(atom: Atom) -> tuple:
    """``atom.key``, computed once per atom (it parses and dumps the code)."""
    return atom.key


def evaluate_expr(expr: PyExpr, frame: pd.DataFrame) -> np.ndarray:
    """Evaluate an arithmetic expression over numeric columns (no ``eval``).

    Parameters
    ----------
    expr:
        From the formula reader: a column, or ``+ - * / **``, numbers and the functions in
        :data:`jaxglmm.formula.MATH_FUNCTIONS` (``I`` is the identity).
    frame:
        The data.

    Returns
    -------
    numpy.ndarray
        float64 (n,).
    """
    if expr.column is not None:
        return _numeric_column(frame, expr.column)
    n = len(frame)

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Name):      # a column (an alias when not an identifier)
            return _numeric_column(frame, column_name(node.id))
        if isinstance(node, ast.Constant):
            return np.full(n, float(node.value))
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp):
            value = ev(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Call):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            args = [ev(a) for a in node.args]
            if func == "log" and len(args) == 2:       # R's log(x, base)
                return np.log(args[0]) / np.log(args[1])
            if len(args) != 1:
                raise ValueError(f"{func}() takes one argument in {expr.source!r}")
            return _FUNCTIONS[func](args[0])
        raise ValueError(f"cannot evaluate {expr.source!r}")

    with np.errstate(all="ignore"):
        return np.asarray(ev(_tree(expr)), dtype=float)


def factor_levels(series: pd.Series, given=None, *, observed_only: bool = True,
                  codes=None) -> tuple[str, ...]:
    """Level labels of a factor, in coding order (the first is the reference).

    ``given`` (from ``levels={col: [...]}``) sets the order; otherwise a pandas Categorical
    keeps its categories' order, numbers sort numerically and strings as R's ``factor()``
    sorts them (:func:`~jaxglmm.design.collation.r_sort_key`: ICU's order, ``apple <
    Banana < cherry``, ``"10" < "9"``).  Unobserved levels are left out unless
    ``observed_only`` is False.  ``codes``: the series' :func:`_label_codes`, where the
    caller has them.
    """
    seen = set((_label_codes(series) if codes is None else codes)[1])
    if given is not None:
        order = [format_label(v) for v in given]
        unknown = sorted(seen - set(order), key=r_sort_key)
        if unknown:
            raise ValueError(f"value(s) {unknown} of {series.name!r} are not in the levels "
                             f"given for it: {order}")
    elif isinstance(series.dtype, pd.CategoricalDtype):
        order = [format_label(v) for v in series.cat.categories]
    elif is_numeric(series):
        order = [format_label(v) for v in np.unique(series.to_numpy())]
    else:
        order = sorted(seen, key=r_sort_key)
    return tuple(lv for lv in order if lv in seen or not observed_only)


# Arrays whose distinct values each have one label, so labels can be made per distinct
# value: pandas' inferred kinds with no two equal values of different types (True == 1).
_ONE_LABEL_KINDS = ("string", "integer", "floating", "mixed-integer-float", "boolean", "empty")


_SHORT = 10_000       # rows up to which a string column is factorized as a numpy copy


def _label_codes(values) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, labels)``: each value's label is ``labels[codes[i]]``.  Labels are made once
    per distinct value, not once per row; an object array mixing kinds (where True == 1
    would merge two labels) is labelled row by row.  A long pandas string column is
    factorized as it is stored, without a numpy copy (timings: docs/benchmarks.md); one of
    at most ``_SHORT`` rows through a numpy copy, which is quicker there."""
    if isinstance(values, pd.Series) and (
            isinstance(values.dtype, pd.StringDtype)
            or pd.api.types.is_string_dtype(values.dtype) and values.dtype != object):
        array = values.array
        if len(array) <= _SHORT and not array.isna().any():
            # a short column: a numpy copy and a hash table beat Arrow's dictionary
            # encoding (cbpp's herd, 56 rows: 21 us against 36 us)
            return pd.factorize(np.asarray(array, dtype=object))
        codes, uniques = pd.factorize(array, use_na_sentinel=False)
        if not uniques.isna().any():    # distinct strings are distinct labels: no merging
            return codes, np.asarray(uniques, dtype=object)
        return _merge_labels(codes, uniques)
    arr = np.asarray(values)
    if arr.dtype == object and pd.api.types.infer_dtype(arr, skipna=False) not in _ONE_LABEL_KINDS:
        labels = np.array([format_label(v) for v in arr], dtype=object)
        codes, uniques = pd.factorize(labels, use_na_sentinel=False)
        return codes, np.asarray(uniques, dtype=object)
    return _merge_labels(*pd.factorize(arr, use_na_sentinel=False))


def _merge_labels(codes, uniques):
    labels = np.array([format_label(v) for v in np.asarray(uniques, dtype=object)], dtype=object)
    # distinct values with one label (2 and 2.0): merge them
    merged, first = pd.factorize(labels)
    return merged[codes], np.asarray(first, dtype=object)


def _labels(values) -> np.ndarray:
    codes, labels = _label_codes(values)
    return labels[codes]


def _column_label_codes(frame, name) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_label_codes` of a column, made once per :class:`~.frame.DataColumns`."""
    if isinstance(frame, DataColumns):
        return frame.memo(("labels", name), lambda: _label_codes(frame[name]))
    return _label_codes(frame[name])


def _level_codes(label_codes, levels) -> np.ndarray:
    """Each value's position in ``levels`` (-1 where its label is not one of them), from
    its :func:`_label_codes`."""
    codes, labels = label_codes
    if not len(labels):
        return np.zeros(0, np.int64)
    position = {label: k for k, label in enumerate(levels)}
    return np.array([position.get(label, -1) for label in labels], dtype=np.int64)[codes]


def dense_unique(keys: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_inverse=True)`` for keys in ``range(n_keys)``: by marking,
    not sorting, when that range is not much larger than the data (timings:
    docs/benchmarks.md)."""
    if n_keys > 4 * keys.size + 1_000_000:
        distinct, inverse = np.unique(keys, return_inverse=True)
        return distinct, inverse.reshape(-1)
    mark = np.zeros(n_keys, bool)
    mark[keys] = True
    position = np.cumsum(mark) - 1
    return np.flatnonzero(mark), position[keys]


@dataclass(frozen=True)
class FactorCoding:
    """Which columns are factors: string/categorical columns, plus those named by the user.

    Attributes
    ----------
    categorical: columns to treat as factors even when numeric.
    levels: level order per column, first is the reference.
    """

    categorical: frozenset = frozenset()
    levels: dict | None = None

    def is_factor(self, series: pd.Series, name: str) -> bool:
        return (name in self.categorical or name in (self.levels or {})
                or not is_numeric(series))

    def given(self, name: str | None):
        return (self.levels or {}).get(name)


def _check_known_levels(labels: np.ndarray, levels: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(labels) - set(levels), key=r_sort_key)
    if unknown:
        raise ValueError(f"level(s) {unknown} of {what!r} were not in the data the model was "
                         f"built from (known: {list(levels)})")


# ----------------------------------------------------------------------------- model matrix
@dataclass(frozen=True)
class _AtomState:
    """What an atom learned from the training data (for new data)."""

    atom: Atom
    placeholder: str
    is_factor: bool = False
    levels: tuple[str, ...] = ()
    center: float = 0.0
    scale: float = 1.0


class ModelMatrix:
    """A model matrix for a list of terms, rebuildable on new data.

    Use :meth:`fit` on the training frame; :attr:`values` and :attr:`names` are then the
    matrix and its column labels, and :meth:`evaluate` builds the same columns for new data
    (same factor levels, training mean/SD for ``scale``, same ``poly`` basis).
    """

    def __init__(self, terms, intercept: bool, states: list[_AtomState], matrix, values,
                 names, plan: ColumnPlan | None = None):
        self.terms, self.intercept, self.states = tuple(terms), intercept, states
        self._matrix, self.values, self.names = matrix, values, tuple(names)
        self._plan = plan           # NumPy columns (.coding); else formulae's ``matrix``

    @property
    def columns(self) -> tuple[str, ...]:
        """The data columns the atoms read."""
        return tuple(dict.fromkeys(n for s in self.states for n in s.atom.names))

    @classmethod
    def fit(cls, terms, intercept: bool, frame: pd.DataFrame, coding: FactorCoding
            ) -> "ModelMatrix":
        """Build the matrix of ``terms`` (tuples of atoms) on ``frame``.

        Parameters
        ----------
        terms:
            Terms from :func:`~jaxglmm.formula.parse_formula`, in column order.
        intercept:
            Whether to add an ``Intercept`` column (it also decides factor coding: without
            one the first factor is coded in full, as in R).
        frame:
            Complete-case training data (a DataFrame or :class:`~.frame.DataColumns`).
        coding:
            Which columns are factors and their level order.
        """
        frame = as_columns(frame)
        fitted: dict = {}
        for term in terms:
            for atom in term:
                key = atom_key(atom)
                if key not in fitted:
                    fitted[key] = _fit_atom(atom, frame, coding,
                                            _PLACEHOLDER.format(len(fitted)))
        states = [state for state, _ in fitted.values()]
        n = len(frame)
        if not terms and not intercept:
            return cls(terms, intercept, states, None, np.zeros((n, 0)), ())
        values = _atom_arrays(states, frame, False, [v for _, v in fitted.values()])
        # NumPy columns (.coding), not formulae: sleepstudy's matrices 2.3 -> 0.05 ms, no import
        plan = None if _FORMULAE_ONLY else _numpy_plan(terms, intercept, states, list(fitted))
        displays = tuple(s.atom.display for s in states)
        if plan is not None:
            return cls(terms, intercept, states, None, build_columns(plan, values, n),
                       _rename(plan.labels, displays), plan)
        placeholders = {atom_key(s.atom): s for s in states}
        rhs = " + ".join(["1" if intercept else "0"] + [
            ":".join(_formulae_text(placeholders[atom_key(a)]) for a in term)
            for term in terms])
        data = _placeholder_frame(states, values, n)
        from formulae import design_matrices  # loads when first used (import time)
        from formulae.environment import Environment
        dm = design_matrices(rhs, data, na_action="error", env=Environment([{}]))
        matrix = dm.common
        _cross_check(matrix, terms, intercept, placeholders, rhs)
        names = _rename(tuple(matrix.as_dataframe().columns), displays)
        values = np.asarray(matrix.design_matrix, dtype=float).reshape(n, len(names))
        return cls(terms, intercept, states, matrix, values, names)

    def evaluate(self, frame: pd.DataFrame) -> np.ndarray:
        """The same columns for new data (float64, shape ``(len(frame), len(names))``)."""
        frame = as_columns(frame)
        n = len(frame)
        if self._matrix is None and self._plan is None:
            return np.zeros((n, 0))
        values = _atom_arrays(self.states, frame, True)
        if self._plan is not None:
            return build_columns(self._plan, values, n)
        out = self._matrix.evaluate_new_data(_placeholder_frame(self.states, values, n))
        return np.asarray(out.design_matrix, dtype=float).reshape(n, len(self.names))


# True: every model matrix is built by formulae (tests compare the two paths with it).
_FORMULAE_ONLY = False


def _numpy_plan(terms, intercept: bool, states, keys) -> ColumnPlan | None:
    """How :mod:`.coding` builds the matrix in NumPy, or None where formulae must build it
    (``poly()``, and what :func:`~.coding.plan_columns` leaves to it).  ``keys``: the
    atoms' keys, in the order of ``states``."""
    if any(s.atom.kind == "poly" for s in states):
        return None
    index = {key: k for k, key in enumerate(keys)}
    return plan_columns(tuple(tuple(index[atom_key(a)] for a in term) for term in terms),
                        bool(intercept), tuple(s.levels if s.is_factor else None for s in states),
                        tuple(s.placeholder for s in states))


def _fit_atom(atom: Atom, frame, coding: FactorCoding, placeholder: str):
    """``(state, values)``: what the atom learns from the training data, and the values
    worked out on the way (a factor's level codes, ``scale``'s unscaled values), or None."""
    expr = atom.expr
    if atom.kind == "factor" or (atom.kind == "column"
                                 and coding.is_factor(frame[expr.column], expr.column)):
        if expr.column:
            source = frame[expr.column]
            label_codes = _column_label_codes(frame, expr.column)
        else:
            source = pd.Series(evaluate_expr(expr, frame), name=atom.display)
            label_codes = _label_codes(source)
        levels = factor_levels(source, coding.given(expr.column), codes=label_codes)
        return _AtomState(atom, placeholder, True, levels), _level_codes(label_codes, levels)
    if atom.kind in ("scale", "center"):
        value = evaluate_expr(expr, frame)
        sd = float(np.std(value, ddof=1)) if atom.kind == "scale" else 1.0
        if not sd > 0:
            raise ValueError(f"{atom.display}: the values have no spread, so they cannot be "
                             "scaled")
        return _AtomState(atom, placeholder, center=float(np.mean(value)), scale=sd), value
    return _AtomState(atom, placeholder), None


def _atom_arrays(states, frame, check_levels: bool, fitted=None) -> list[np.ndarray]:
    """Each atom's values: a factor's level codes, a number's float64 values (``scale``
    and ``center`` with the training mean and SD).  ``fitted``: values :func:`_fit_atom`
    worked out, not evaluated again.  Non-finite numbers are an error."""
    out = []
    for k, state in enumerate(states):
        atom = state.atom
        value = fitted[k] if fitted is not None else None
        if state.is_factor:
            if value is None:
                column = atom.expr.column
                label_codes = (_column_label_codes(frame, column) if column is not None
                               else _label_codes(evaluate_expr(atom.expr, frame)))
                value = _level_codes(label_codes, state.levels)
                if check_levels:
                    _check_known_levels(label_codes[1], state.levels, atom.display)
        else:
            if value is None:
                value = evaluate_expr(atom.expr, frame)
            if atom.kind in ("scale", "center"):
                value = (value - state.center) / state.scale
        out.append(value)
    for state, value in zip(states, out):
        if not state.is_factor and not np.isfinite(value).all():
            bad = int(np.sum(~np.isfinite(value)))
            raise ValueError(f"{state.atom.display!r} has {bad} non-finite value(s) (for "
                             "example the log of zero or of a negative number)")
    return out


def _placeholder_frame(states, values, n: int) -> pd.DataFrame:
    """The atoms' values as formulae's data: placeholder columns, factors as ordered
    categoricals of their levels."""
    data = {s.placeholder: pd.Categorical.from_codes(v, categories=list(s.levels), ordered=True)
            if s.is_factor else v for s, v in zip(states, values)}
    return pd.DataFrame(data, index=range(n))


def _formulae_text(state: _AtomState) -> str:
    atom = state.atom
    if atom.kind == "poly":
        return f"poly({state.placeholder}, {atom.degree}{', raw=True' if atom.raw else ''})"
    return state.placeholder


@lru_cache(maxsize=256)
def _rename(labels: tuple[str, ...], displays: tuple[str, ...]) -> tuple[str, ...]:
    """Placeholders back to what the user wrote (``displays``: per atom); poly() columns
    numbered from 1, as R's ``poly(x, 2)1``, ``poly(x, 2)2`` (formulae numbers them from
    0)."""
    def display(m):
        if m.group(1) is not None:
            text = displays[int(m.group(1))]
            return text if m.group(2) is None else f"{text}[{int(m.group(2)) + 1}]"
        return displays[int(m.group(3))]
    return tuple(_PLACEHOLDER_RE.sub(display, label) for label in labels)


def _cross_check(matrix, terms, intercept, placeholders, rhs) -> None:
    """formulae must have built exactly the terms it was given (nothing silently dropped)."""
    built = [t for name, t in matrix.terms.items() if name != "Intercept"]
    expected = [{placeholders[atom_key(a)].placeholder for a in term} for term in terms]
    got = [set(getattr(t, "var_names", ())) - {""} for t in built]  # poly() adds ''.
    if got != expected or intercept != ("Intercept" in matrix.terms):
        raise RuntimeError(f"internal error: formulae built {list(matrix.terms)} from {rhs!r}")


# ----------------------------------------------------------------------------- groups
@dataclass(frozen=True)
class GroupingFactor:
    """A grouping factor (``g`` or ``a:b``) with its levels, for training and new data."""

    columns: tuple[str, ...]
    levels: tuple[str, ...]

    @property
    def name(self) -> str:
        return ":".join(self.columns)

    def labels(self, frame: pd.DataFrame) -> np.ndarray:
        parts = [_labels(frame[c].to_numpy()) for c in self.columns]
        out = parts[0]
        for p in parts[1:]:
            out = np.array([f"{a}:{b}" for a, b in zip(out, p)], dtype=object)
        return out

    @classmethod
    def fit(cls, columns: tuple[str, ...], frame: pd.DataFrame, coding: FactorCoding
            ) -> tuple["GroupingFactor", np.ndarray]:
        """Levels in R's order for ``factor(a:b)``: the first factor varies slowest, only
        combinations that occur; returns the factor and the int32 group index."""
        label_codes = [_column_label_codes(frame, c) for c in columns]
        per_col = [factor_levels(frame[c], coding.given(c), codes=lc)
                   for c, lc in zip(columns, label_codes)]
        codes = [_level_codes(lc, lv) for lc, lv in zip(label_codes, per_col)]
        n_keys = 1
        for lv in per_col:
            n_keys *= len(lv) + 1
        if n_keys < 2 ** 62:
            # one integer per combination, the first column most significant: its sorted
            # distinct values are the combinations in lexicographic order
            key = np.zeros(len(frame), np.int64)
            for c, lv in zip(codes, per_col):
                key = key * (len(lv) + 1) + (c + 1)
            distinct, group_index = dense_unique(key, n_keys)
            combos, rest = [], distinct       # per column, its level in each combination
            for lv in reversed(per_col):
                combos.append((rest % (len(lv) + 1) - 1).tolist())
                rest = rest // (len(lv) + 1)
            combos.reverse()
        else:                      # too many combinations for one integer: rows of codes
            rows, group_index = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
            combos = [rows[:, j].tolist() for j in range(len(per_col))]
        named = [[lv[k] for k in ks] for lv, ks in zip(per_col, combos)]
        levels = tuple(named[0]) if len(named) == 1 else tuple(":".join(p) for p in zip(*named))
        factor = cls(tuple(columns), levels)
        return factor, group_index.astype(np.int32).reshape(len(frame))

    def index(self, frame: pd.DataFrame, allow_new_levels: bool) -> np.ndarray:
        """Group index of new data; unseen levels get -1 (or raise)."""
        lookup = {lv: i for i, lv in enumerate(self.levels)}
        missing = np.zeros(len(frame), dtype=bool)
        for c in self.columns:
            missing |= frame[c].isna().to_numpy()
        labels = self.labels(frame)
        out = np.array([-1 if m else lookup.get(lv, -1) for lv, m in zip(labels, missing)],
                       dtype=np.int32)
        if not allow_new_levels and np.any(out < 0):
            new = sorted({str(lv) for lv, i in zip(labels, out) if i < 0}, key=r_sort_key)
            raise ValueError(f"new level(s) {new[:10]} of grouping factor {self.name!r}; pass "
                             "allow_new_levels=True to predict them with zero random effects")
        return out


# ----------------------------------------------------------------------------- rank
def aliased_columns(X: np.ndarray, tol: float = 1e-7) -> list[int]:
    """Columns of ``X`` that are linear combinations of earlier columns.

    Mirrors R's ``qr(X, tol = 1e-7)`` (LINPACK ``dqrdc2``, which lme4 uses to drop
    rank-deficient columns): columns are taken in order and a column is aliased when the
    norm left after projecting out the kept columns is below ``tol`` times its own norm.
    Unlike a LAPACK pivoted QR this keeps the earliest columns, so the dropped ones are those
    R drops.

    Examples
    --------
    >>> aliased_columns(np.array([[1., 1, 2], [1, 2, 3], [1, 3, 4]]))
    [2]
    """
    X = np.asarray(X, dtype=float)
    basis: list[np.ndarray] = []
    dropped = []
    for j in range(X.shape[1]):
        v = X[:, j].copy()
        norm0 = np.linalg.norm(v)
        for _ in range(2):  # twice: re-orthogonalisation keeps Gram-Schmidt stable
            for q in basis:
                v -= (q @ v) * q
        norm = np.linalg.norm(v)
        if norm0 == 0 or norm <= tol * norm0:
            dropped.append(j)
        else:
            basis.append(v / norm)
    return dropped
