"""Formula stage: lme4/brms formula strings read into data-independent records.

Pure Python: no pandas, no JAX.  :func:`parse_formula` is the entry point; every problem is a
:class:`FormulaError` that names the place.
"""
from .parser import ParsedFormula, RandomSpec, ResponseSpec, parse_formula
from .terms import Atom, PyExpr, Term, column_name, python_name, r_name, term_key
from .tokens import MATH_FUNCTIONS, TRANSFORMS, FormulaError, Token, tokenize

__all__ = ["parse_formula", "ParsedFormula", "RandomSpec", "ResponseSpec", "FormulaError",
           "Atom", "PyExpr", "Term", "term_key", "column_name", "python_name", "r_name",
           "Token", "tokenize", "MATH_FUNCTIONS", "TRANSFORMS"]
