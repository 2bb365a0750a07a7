"""The atoms a formula is made of: pure records, no data.

The formula reader (:mod:`jaxglmm.formula.parser`) produces :class:`Atom` and :class:`PyExpr`
records; :mod:`jaxglmm.design.matrices` evaluates them on data.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

__all__ = ["PyExpr", "Atom", "Term", "term_key"]


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class PyExpr:
    """An arithmetic expression over columns, kept as Python code.

    Attributes
    ----------
    source: the text as written (``"size - incidence"``).
    code: Python code, R's ``^`` written as ``**`` (``"size - incidence"``).
    names: the column names it reads, in order of appearance.
    column: set when the expression is just one column (whose name may not be Python).
    """

    source: str
    code: str
    names: tuple[str, ...]
    column: str | None = None

    @property
    def tree(self) -> ast.Expression:
        return ast.parse(self.code, mode="eval")

    @classmethod
    def of_column(cls, name: str) -> "PyExpr":
        """A bare column reference (any column name, spaces and dots included)."""
        return cls(name, repr(name), (name,), column=name)


@dataclass(frozen=True)
class Atom:
    """One factor of a term: a column or a transform of columns.

    Attributes
    ----------
    kind:
        ``"column"``, ``"math"`` (stateless: ``log(x)``, ``I(x^2)``), ``"scale"``,
        ``"center"``, ``"factor"`` (``C(x)``, ``factor(x)``) or ``"poly"``.
    display:
        Its name in column labels (``"Days"``, ``"I(age^2)"``, ``"scale(x)"``).
    expr:
        The value it transforms (for ``column`` and ``math`` the whole atom).
    degree, raw:
        ``poly`` only.
    """

    kind: str
    display: str
    expr: PyExpr
    degree: int = 0
    raw: bool = False

    @property
    def key(self) -> tuple:
        """Identity of the atom: the same expression however it is spaced."""
        return (self.kind, ast.dump(self.expr.tree), self.degree, self.raw)

    @property
    def names(self) -> tuple[str, ...]:
        return self.expr.names


Term = tuple  # a tuple of Atom; identity is the set of atom keys


def term_key(term: Term) -> frozenset:
    """Identity of a term: ``a:b`` and ``b:a`` are the same term."""
    return frozenset(a.key for a in term)
