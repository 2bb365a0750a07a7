"""The atoms a formula is made of: pure records, no data.

The formula reader (:mod:`jaxglmm.formula.parser`) produces :class:`Atom` and :class:`PyExpr`
records; :mod:`jaxglmm.design.matrices` evaluates them on data.
"""
from __future__ import annotations

import ast
import keyword
import re
from dataclasses import dataclass

__all__ = ["PyExpr", "Atom", "Term", "term_key", "python_name", "column_name", "r_name",
           "r_text"]

# ----------------------------------------------------------------------------- column names
# A column whose name is not a Python identifier (R's dotted names, ``x.pos``, or anything
# backticked, ``my var``) is written in an expression's Python code as an alias made from
# its name: every character that is not an ASCII letter or digit becomes ``_<hex>_``.  The
# alias is a function of the name alone, so the same column has the same alias in every
# expression (atom keys compare the code) and the name can be read back from it.
_ALIAS = "JGc_"
_ALIAS_RE = re.compile(r"\bJGc_\w*")
_R_RESERVED = {"if", "else", "repeat", "while", "function", "for", "next", "break", "in",
               "TRUE", "FALSE", "NULL", "Inf", "NaN", "NA", "NA_integer_", "NA_real_",
               "NA_character_", "NA_complex_"}
_R_SYNTACTIC = re.compile(r"(?:[^\W\d_]|\.(?![\d]))[\w.]*|\.")


def python_name(column: str) -> str:
    """The identifier standing for ``column`` in Python code: the name itself when it is a
    Python identifier (and not a keyword), else its alias."""
    if column.isidentifier() and not keyword.iskeyword(column):
        return column
    return _ALIAS + "".join(c if c.isascii() and c.isalnum() else f"_{ord(c):x}_"
                            for c in column)


def column_name(identifier: str) -> str:
    """The column an identifier of Python code reads (an alias decoded, see
    :func:`python_name`)."""
    if not identifier.startswith(_ALIAS):
        return identifier
    return re.sub(r"_([0-9a-f]+)_", lambda m: chr(int(m.group(1), 16)),
                  identifier[len(_ALIAS):])


def r_name(column: str) -> str:
    """A column as R deparses it: ``x.pos`` bare, a non-syntactic name in backticks."""
    if _R_SYNTACTIC.fullmatch(column) and column not in _R_RESERVED:
        return column
    return f"`{column}`"


def r_text(code: str) -> str:
    """Python code with its aliases written back as R names (for labels)."""
    return _ALIAS_RE.sub(lambda m: r_name(column_name(m.group())), code)



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
        """The parsed code; a column whose name is not an identifier is an alias in it
        (:func:`column_name` reads it back)."""
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
