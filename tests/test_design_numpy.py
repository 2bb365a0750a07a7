"""The NumPy model matrices (jaxglmm.design.coding) against formulae's, on a grid of formulas.

Every formula is built twice: as the package builds it (NumPy where it can) and with every
model matrix made by formulae (``matrices._FORMULAE_ONLY``).  The column names, their order
and the values must be the same (the values to the last bit), for the training data and for
new data, and where formulae refuses a formula the package must refuse it with the same
error.
"""
import sys

import numpy as np
import pandas as pd
import pytest

import jaxglmm  # noqa: F401  (enables float64)
from jaxglmm.design import build_design, matrices
from jaxglmm.design.coding import formulae_codings
from jaxglmm.io.datasets import load_dataset

N = 48


def _data(strings: str = "str") -> pd.DataFrame:
    rng = np.random.default_rng(7)
    a = rng.choice(["p", "q", "r"], N)
    b = rng.choice(["v", "u"], N)
    return pd.DataFrame({
        "y": rng.normal(size=N),
        "x": rng.normal(size=N),
        "z": rng.normal(size=N),
        "w": rng.uniform(0.5, 2.0, N),
        "a": pd.Series(a, dtype=strings),
        # unordered, categories not in alphabetical order, one never observed
        "b": pd.Categorical(b, categories=["v", "u", "t"]),
        "c": rng.integers(1, 4, N),                   # integer codes, a factor by option
        "d": rng.integers(0, 2, N).astype(bool),      # booleans: 0/1, or a factor by option
        "g": pd.Series(rng.choice(list("ABCDEFGH"), N), dtype=strings),
    })


FIXED = [
    "a", "x", "a + x", "x + a", "a*x", "a:x", "x:a", "a*b", "b*a", "a:b", "b:a", "a + a:b",
    "b + a:b", "a + b + a:b", "a*b*x", "x*a*b", "a*b*c", "a:b:c", "a + b + a:b:c",
    "x*z*a", "x:z + a:x:z", "a:x + b:x", "x + a:b:x", "a*x + b*z", "log(w) + a",
    "scale(x)*a", "center(z):b", "I(x^2):a", "I(-x^2) + a:z", "factor(c)", "C(c):x",
    "c + a:c", "d + x", "d*a", "a:x + a", "z:x + a:x:z + b:z:x", "a:b + a:c", "x:a + b",
    "(a + b + x)^2", "poly(x, 2) + a", "a*poly(z, 2)", "a:b:x", "x + x:b:a", "(x + z):a",
    "b + a:b", "I(x^2)*a*b", "d:x + d", "c*x", "C(c)*b", "z + a:b:z + a:z",
]
RANDOM = [
    "(x | g)", "(a | g)", "(0 + a | g)", "(a:x | g)", "(1 | g) + (0 + b | g)", "(x || g)",
    "(0 + a:b | g)", "(a*x | g)", "(1 | a:g)", "(0 + x:b | g)", "(a + x || g)",
    "(1 | g) + (0 + a | g)",
]
OPTIONS = {"c + a:c": {"categorical": ["c"]}, "a*b*c": {"categorical": ["c"]},
           "a:b:c": {"categorical": ["c"]}, "a + b + a:b:c": {"categorical": ["c"]},
           "a:b + a:c": {"categorical": ["c"]}, "d*a": {"categorical": ["d"]},
           "d:x + d": {"categorical": ["d"]}}


def _formulas(every: int = 1):
    """The grid: each fixed part with and without an intercept (and a few with ``- 1``),
    each random term after a number and after a factor coded in full; ``every``: one
    formula in so many."""
    grid = [(form.format(rhs), OPTIONS.get(rhs, {}))
            for rhs in FIXED for form in ("y ~ {}", "y ~ 0 + {}")]
    grid += [(f"y ~ {rhs} - 1", OPTIONS.get(rhs, {})) for rhs in FIXED[::6]]
    grid += [(f"y ~ x + {rhs}", {}) for rhs in RANDOM]
    grid += [(f"y ~ 0 + a + {rhs}", {}) for rhs in RANDOM]
    return grid[::every]


def _build(formula, df, options, formulae_only, monkeypatch):
    monkeypatch.setattr(matrices, "_FORMULAE_ONLY", formulae_only)
    try:
        return build_design(formula, df, **options), None
    except Exception as err:                      # noqa: BLE001 (compared below)
        return None, err


def _same(d1, d2, what):
    assert d1.fixef_names == d2.fixef_names, what
    assert d1.X.shape == d2.X.shape and np.array_equal(d1.X, d2.X), what
    assert d1.messages == d2.messages, what
    assert [t.label for t in d1.terms] == [t.label for t in d2.terms], what
    for t1, t2 in zip(d1.terms, d2.terms):
        assert t1.names == t2.names and t1.levels == t2.levels, what
        assert np.array_equal(t1.Z, t2.Z) and np.array_equal(t1.group_index, t2.group_index)


def _new(design, df, formulae_only, monkeypatch):
    monkeypatch.setattr(matrices, "_FORMULAE_ONLY", formulae_only)
    try:
        return design.new_data(df), None
    except Exception as err:                      # noqa: BLE001
        return None, err


def _same_error(e1, e2, what):
    assert e1 is not None and e2 is not None, (what, e1, e2)
    assert type(e1) is type(e2) and str(e1) == str(e2), what


@pytest.mark.parametrize("strings, every", [("str", 1), ("object", 3)])
def test_numpy_matrices_are_formulae_matrices(strings, every, monkeypatch):
    df = _data(strings)
    new = df.iloc[[5, 1, 30, 2, 17, 9, 40]].reset_index(drop=True)
    unknown = new.assign(a=pd.Series(["p", "s", "q", "p", "p", "p", "p"], dtype=strings))
    built = 0
    for formula, options in _formulas(every):
        fast, e_fast = _build(formula, df, options, False, monkeypatch)
        slow, e_slow = _build(formula, df, options, True, monkeypatch)
        if e_fast is None and e_slow is not None:
            # formulae adds terms of its own (refused: "internal error: formulae built") or
            # fails (IndexError in its absorption): coded by R's rule (test_r_rule_...)
            assert fast.spec.fixed._plan is not None, formula
            continue
        if e_slow is not None or e_fast is not None:
            _same_error(e_fast, e_slow, formula)
            continue
        built += 1
        _same(fast, slow, formula)
        for data in (new, unknown):
            n_fast, e1 = _new(fast, data, False, monkeypatch)
            n_slow, e2 = _new(slow, data, True, monkeypatch)
            if e1 is not None or e2 is not None:
                _same_error(e1, e2, formula)
                continue
            assert np.array_equal(n_fast.X, n_slow.X), formula
            for t1, t2 in zip(n_fast.terms, n_slow.terms):
                assert np.array_equal(t1.Z, t2.Z), formula
                assert np.array_equal(t1.group_index, t2.group_index), formula
    assert built > 80 // every


@pytest.mark.parametrize("formula", [
    "y ~ a*b*x + (a | g)", "y ~ 0 + a:b + (0 + x:b | g)", "y ~ c + a:c + (1 | g)",
    "y ~ scale(x)*a + log(w):b", "y ~ x:z + a:x:z",
])
def test_the_numpy_path_builds_these(formula):
    d = build_design(formula, _data(), categorical=["c"])
    assert d.spec.fixed._plan is not None and d.spec.fixed._matrix is None
    assert all(t.matrix._plan is not None for t in d.spec.terms)


def test_formulae_still_builds_these():
    d = build_design("y ~ poly(x, 2) + a", _data())     # orthogonal polynomials: formulae's
    assert d.spec.fixed._plan is None and d.spec.fixed._matrix is not None


@pytest.mark.parametrize("formula, names, dropped", [
    # R's model.matrix: a factor in full where the term without it lies within no earlier
    # term; the aliased column then dropped as lme4 drops it (formulae adds terms instead)
    ("y ~ a:b", ("Intercept", "a[p]:b[v]", "a[p]:b[u]", "a[q]:b[v]", "a[q]:b[u]",
                 "a[r]:b[v]"), "a[r]:b[u]"),
    ("y ~ a:b + a:x", ("Intercept", "a[p]:b[v]", "a[p]:b[u]", "a[q]:b[v]", "a[q]:b[u]",
                       "a[r]:b[v]", "a[p]:x", "a[q]:x", "a[r]:x"), "a[r]:b[u]"),
    ("y ~ x + a:b:x", ("Intercept", "x", "a[p]:b[v]:x", "a[p]:b[u]:x", "a[q]:b[v]:x",
                       "a[q]:b[u]:x", "a[r]:b[v]:x"), "a[r]:b[u]:x"),
    ("y ~ a:b + a", ("Intercept", "a[q]", "a[r]", "a[p]:b[u]", "a[q]:b[u]", "a[r]:b[u]"),
     None),                         # R's order: a first, then a:b coded against it
])
def test_r_rule_where_formulae_adds_terms(formula, names, dropped):
    d = build_design(formula, _data())
    assert d.spec.fixed._plan is not None
    assert d.fixef_names == names
    drops = [m for m in d.messages if "rank deficient" in m]
    assert drops == ([f"fixed-effect model matrix is rank deficient so dropping 1 columns: "
                      f"{dropped}"] if dropped else [])
    assert np.linalg.matrix_rank(d.X) == d.X.shape[1]


def test_names_and_coding_written_out():
    d = build_design("y ~ a + a:b + x:b", _data())
    assert d.fixef_names == ("Intercept", "a[q]", "a[r]", "a[p]:b[u]", "a[q]:b[u]",
                             "a[r]:b[u]", "x:b[v]", "x:b[u]")
    d = build_design("y ~ 0 + a*b", _data())
    assert d.fixef_names == ("a[p]", "a[q]", "a[r]", "b[u]", "a[q]:b[u]", "a[r]:b[u]")


def test_formulae_codings():
    # a + b + a:b: treatment contrasts everywhere
    assert formulae_codings([(0,), (1,), (0, 1)], True, [True, True]) == \
        [{0: False}, {1: False}, {0: False, 1: False}]
    # no intercept: the first factor in full
    assert formulae_codings([(0,), (1,)], False, [True, True]) == [{0: True}, {1: False}]
    # x + x:a: a by contrasts (its margin x is in the model); x:a alone: in full
    assert formulae_codings([(1,), (0, 1)], True, [True, False]) == [{}, {0: False}]
    assert formulae_codings([(0, 1)], True, [True, False]) == [{0: True}]
    # a:b:c with a, b, c but no two-way terms: formulae adds terms
    assert formulae_codings([(0,), (1,), (2,), (0, 1, 2)], True, [True] * 3) is None


def test_no_formulae_import_for_sleepstudy(monkeypatch):
    """The NumPy path does not import formulae (None in sys.modules: an import fails)."""
    monkeypatch.setitem(sys.modules, "formulae", None)
    monkeypatch.setitem(sys.modules, "formulae.environment", None)
    d = build_design("Reaction ~ Days + (Days | Subject)", load_dataset("sleepstudy"))
    assert d.fixef_names == ("Intercept", "Days") and d.terms[0].names == ("Intercept", "Days")
    d = build_design("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                     load_dataset("cbpp"), "binomial")
    assert d.fixef_names == ("Intercept", "period[2]", "period[3]", "period[4]")
    with pytest.raises(ImportError):            # the check would see an import
        build_design("y ~ poly(x, 2)", _data())
