"""Model-matrix columns from evaluated atoms, in NumPy: the fast path of the model matrix.

:class:`~.matrices.ModelMatrix` evaluates every atom of a term itself (numbers, or a factor's
level codes); what is left is to combine them into columns the way formulae 0.9's
``design_matrices`` combines them, which this module does without formulae:

* a factor in a term is coded in full (one indicator column per level) or by treatment
  contrasts (the first level dropped) by formulae's rule (patsy's, ported from
  ``formulae.contrasts.pick_contrasts`` and ``Model._get_encoding_groups``): the factors of
  an all-factor term are weighed against the intercept and the earlier all-factor terms, a
  factor in a term with numbers against the earlier terms with the same numbers.  With an
  intercept this is R's rule (``a + a:b`` codes ``a`` by contrasts, and within ``a:b``
  ``a`` in full and ``b`` by contrasts); without one the first factor is coded in full;
* a term's columns are the products of its atoms' columns, the first atom varying slowest,
  named ``x``, ``g[b]``, ``x:g[b]``; an ``Intercept`` column comes first.

Where formulae would code a term as more than one block (it adds terms of its own, as for
``a:b`` with an intercept and neither main effect), the term is coded by R's rule instead
(:func:`r_codings`: ``model.matrix``'s columns, the aliased ones then dropped as lme4 drops
them).  For factors with one level :func:`plan_columns` returns None and the caller asks
formulae.

Kept instead of formulae's ``design_matrices`` for speed: sleepstudy's two model matrices
(``Days`` and ``(Days | Subject)``) took 2.3-2.6 ms through formulae and take 0.05-0.09 ms
here, cbpp's 3.6 ms and 0.15 ms, and a new process no longer imports formulae (0.24 s) for
them (median timings, 2-core machine under load; tests/test_design_numpy.py compares the two).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations, product

import numpy as np

__all__ = ["ColumnPlan", "formulae_codings", "r_codings", "plan_columns", "build_columns"]


@dataclass(frozen=True)
class ColumnPlan:
    """How a model matrix is made from its atoms' values.

    Attributes
    ----------
    intercept: a column of ones comes first.
    terms: per term, per atom in the term's order, ``(atom index, first)``: ``first`` is -1
        for a number, else the first level given a column (0: every level, an indicator
        each; 1: treatment contrasts, the reference level dropped).
    n_levels: per atom, its number of levels (0 for a number).
    labels: the column labels, as formulae writes them from the atoms' ``labels``.
    """

    intercept: bool
    terms: tuple[tuple[tuple[int, int], ...], ...]
    n_levels: tuple[int, ...]
    labels: tuple[str, ...]


def _pick_contrast(factors: list[int], used: set) -> list[dict] | None:
    """formulae's ``ExpandedTerm.pick_contrast``: the subterms of a term not spanned by the
    ``used`` ones (updated in place), simplified by absorption; per subterm, factor ->
    coded in full.  None where formulae's absorption would fail (an assertion there)."""
    subterms = [frozenset((f, False) for f in subset)
                for r in range(len(factors) + 1) for subset in combinations(factors, r)]
    subterms = [s for s in subterms if s not in used]
    used.update(subterms)
    merged = True
    while merged:
        merged = False
        for i, short in enumerate(subterms):
            for j in range(i + 1, len(subterms)):
                long = subterms[j]
                if len(long) - len(short) == 1 and long >= short:
                    (factor, full), = long - short
                    if full:
                        return None
                    subterms[j] = short | {(factor, True)}
                    subterms.pop(i)
                    merged = True
                    break
            if merged:
                break
    return [dict(s) for s in subterms]


def formulae_codings(terms, intercept: bool, is_factor) -> list[dict] | None:
    """Per term (a tuple of atom indices), ``{factor atom: coded in full}`` by formulae's
    rule; None where formulae does not code every term as one block.

    Examples
    --------
    >>> formulae_codings([(0,), (0, 1)], True, [True, True])      # a + a:b
    [{0: False}, {1: False, 0: True}]
    >>> formulae_codings([(0, 1)], True, [True, True]) is None    # a:b: formulae adds b
    True
    """
    present = set(terms)
    factor_terms: dict = {(): []} if intercept else {}
    number_groups: dict = {}
    for term in terms:
        factors = [i for i in term if is_factor[i]]
        numbers = tuple(i for i in term if not is_factor[i])
        if factors and not numbers:
            factor_terms[term] = factors
        elif factors:
            group = number_groups.setdefault(frozenset(numbers), {})
            if numbers in present:         # the same numbers (in this order) as a term
                group[numbers] = []
            group[term] = factors
    codings: dict = {}
    for group in (factor_terms, *number_groups.values()):
        used: set = set()
        for key, factors in group.items():
            picked = _pick_contrast(factors, used)
            if picked is None or len(picked) != 1:
                return None
            codings[key] = picked[0]
    return [codings.get(term, {}) for term in terms]


def r_codings(terms, intercept: bool, is_factor) -> list[dict]:
    """Per term, ``{factor atom: coded in full}`` by R's rule (``TermCode`` in R's
    ``model.c``, Chambers and Hastie 1992, p. 38): a factor is coded by contrasts where the
    term without it is empty or lies within an earlier term, and in full otherwise;
    without an intercept, the first factor of the first term that has one is coded in full.

    For the formulas formulae codes by adding terms of its own (``a:b`` with an intercept and
    neither main effect, ``a:b + a:c``, ``a + b + a:b:c``): R codes them in one block each,
    and the aliased columns that leaves are dropped as lme4 drops them (the design's rank
    check).

    Examples
    --------
    >>> r_codings([(0, 1)], True, [True, True])                    # a:b: both in full
    [{0: True, 1: True}]
    >>> r_codings([(0, 1), (0, 2)], True, [True] * 3)              # a:b + a:c
    [{0: True, 1: True}, {0: True, 2: False}]
    """
    out, earlier, first_full = [], [], not intercept
    for term in terms:
        coding = {}
        for i in term:
            if not is_factor[i]:
                continue
            rest = set(term) - {i}
            coding[i] = bool(rest) and not any(rest <= set(t) for t in earlier)
            if first_full:
                coding[i], first_full = True, False
        out.append(coding)
        earlier.append(term)
    return out


@lru_cache(maxsize=256)
def plan_columns(terms: tuple[tuple[int, ...], ...], intercept: bool, levels: tuple,
                 placeholders: tuple[str, ...]) -> ColumnPlan | None:
    """The plan of a model matrix, or None where formulae must build it (made once per
    structure: a model refitted to data of the same levels does not plan again).

    Parameters
    ----------
    terms: per term, its atoms' indices in the term's order.
    intercept: whether an ``Intercept`` column comes first.
    levels: per atom, its levels (a factor) or None (a number).
    placeholders: per atom, the name formulae would see (labels are made from them).
    """
    if any(lv is not None and len(lv) < 2 for lv in levels):
        return None
    is_factor = [lv is not None for lv in levels]
    codings = formulae_codings(terms, intercept, is_factor)
    if codings is None:     # formulae would add terms of its own: R's rule, as model.matrix
        codings = r_codings(terms, intercept, is_factor)
    plan_terms, labels = [], ["Intercept"] if intercept else []
    for term, coding in zip(terms, codings):
        atoms, parts = [], []
        for i in term:
            if levels[i] is None:
                atoms.append((i, -1))
                parts.append((placeholders[i],))
            else:
                first = 0 if coding.get(i, False) else 1
                atoms.append((i, first))
                parts.append([f"{placeholders[i]}[{lv}]" for lv in levels[i][first:]])
        plan_terms.append(tuple(atoms))
        labels += [":".join(p) for p in product(*parts)]
    return ColumnPlan(intercept, tuple(plan_terms),
                      tuple(0 if lv is None else len(lv) for lv in levels), tuple(labels))


def build_columns(plan: ColumnPlan, values, n: int) -> np.ndarray:
    """The model matrix, float64 ``(n, len(plan.labels))``, from the atoms' ``values``
    (float64 numbers, or a factor's level codes).  Products are taken in the term's order,
    as formulae takes them, so the values are the same to the last bit."""
    out = np.empty((n, len(plan.labels)))
    j = 0
    if plan.intercept:
        out[:, 0] = 1.0
        j = 1
    for term in plan.terms:
        block = None
        for i, first in term:
            if first < 0:
                part = np.asarray(values[i], dtype=float).reshape(n, 1)
            else:
                part = np.eye(plan.n_levels[i])[values[i], first:]
            block = part if block is None else \
                (block[:, :, None] * part[:, None, :]).reshape(n, -1)
        out[:, j:j + block.shape[1]] = block
        j += block.shape[1]
    return out
