"""Formula stage: the arithmetic inside a formula (``log(x + 1)``, ``I(age^2)``, a
``cbind()`` argument) read as a Python expression.

R's arithmetic is rewritten to Python (:func:`pythonize`) and checked with :mod:`ast`
(:func:`python_expr`): only numbers, column names, arithmetic operators and the functions of
:data:`~jaxglmm.formula.tokens.MATH_FUNCTIONS` (plain or as ``np.``) are accepted, and the
columns the expression reads are recorded in its :class:`~jaxglmm.formula.terms.PyExpr`.
"""
from __future__ import annotations

import ast
import re

from .terms import PyExpr, column_name, python_name
from .tokens import MATH_FUNCTIONS, FormulaError

_R_CONSTANTS = {"TRUE": "True", "FALSE": "False", "T": "True", "F": "False"}


# A string literal, a backticked name, an R name (dots allowed; not the digits of a number
# such as 1.5e3 or .5) or a caret.
_CODE_PIECE = re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`|(?<![\w.])(?:[^\W\d]|\.(?!\d))[\w.]*|\^")


def pythonize(text: str) -> str:
    """R arithmetic to Python: ``^`` is a power; TRUE/FALSE are booleans; a column name
    that is not a Python identifier (``x.pos``, `` `my var` ``) becomes its alias
    (:func:`~jaxglmm.formula.terms.python_name`).  A name followed by ``(`` is a function
    (``log``, ``np.log``) and is left as written."""
    def piece(m):
        word = m.group()
        if word == "^":
            return "**"
        if word[0] in "'\"":
            return word
        followed_by_call = text[m.end():].lstrip().startswith("(")
        if word[0] == "`":
            return python_name(word[1:-1]) if not followed_by_call else word[1:-1]
        if word in ("TRUE", "FALSE"):
            return _R_CONSTANTS[word]
        if followed_by_call or word in ("True", "False", "None"):
            return word
        return python_name(word)
    return _CODE_PIECE.sub(piece, text)


def python_expr(source: str, pos: int, formula: str, *, what: str) -> PyExpr:
    """Check ``source`` as an arithmetic expression and record the columns it reads."""
    stripped = source.strip()
    if re.fullmatch(r"`[^`]+`", stripped):
        return PyExpr.of_column(stripped[1:-1])
    code = pythonize(stripped)
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError:
        raise FormulaError(f"cannot read {what} {stripped!r}", formula, pos + 1) from None
    if isinstance(tree.body, ast.Name):
        return PyExpr.of_column(column_name(tree.body.id))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fname = _callee_name(node.func)
            if fname not in MATH_FUNCTIONS + ("I",):
                raise FormulaError(f"unknown function {fname!r} in {what} {stripped!r}",
                                   formula, pos + 1)
            if node.keywords:
                raise FormulaError(f"{fname}() takes no named arguments", formula, pos + 1)
        elif isinstance(node, ast.Attribute) and not _is_numpy_callee(node):
            raise FormulaError(f"cannot read {what} {stripped!r}", formula, pos + 1)
        elif isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Name, ast.Constant, ast.Expression,
                               ast.Load, ast.operator, ast.unaryop, ast.Attribute)):
            pass
        else:
            raise FormulaError(f"cannot read {what} {stripped!r}", formula, pos + 1)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not _is_callee(tree, node):
            name = column_name(node.id)
            if name not in names:
                names.append(name)
    return PyExpr(stripped, code, tuple(names))


def _callee_name(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if _is_numpy_callee(func):
        return func.attr
    return ast.unparse(func)


def _is_numpy_callee(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in ("np", "numpy"))


def _is_callee(tree: ast.AST, name: ast.Name) -> bool:
    return any(isinstance(n, ast.Call) and (n.func is name or (
        isinstance(n.func, ast.Attribute) and n.func.value is name)) for n in ast.walk(tree))
