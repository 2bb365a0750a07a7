"""The formula tokenizer: the string split into names, numbers, calls and operators, and the
error every formula problem raises (naming the place)."""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["FormulaError", "Token", "tokenize", "MATH_FUNCTIONS", "TRANSFORMS"]

#: Stateless numeric functions usable in transforms, offsets and responses.
MATH_FUNCTIONS = ("log", "log2", "log10", "log1p", "exp", "expm1", "sqrt", "abs")
#: Every function a right-hand-side term may call.
TRANSFORMS = MATH_FUNCTIONS + ("I", "scale", "center", "C", "factor", "poly")
_OPERAND_KINDS = ("NAME", "NUMBER", "CALL")
_CALLABLE = TRANSFORMS + ("offset", "cbind", "trials")



class FormulaError(ValueError):
    """A formula that cannot be read, with the place of the problem.

    Parameters
    ----------
    message:
        What is wrong (``"missing operator between 'x' and 'z'"``).
    formula:
        The whole formula, quoted at the end of the message when given.
    column:
        1-based column of the problem in ``formula``, added to the message when given.
    """

    def __init__(self, message: str, formula: str | None = None, column: int | None = None):
        self.formula = formula
        self.column = column
        text = message
        if column is not None:
            text += f" at column {column}"
        if formula is not None:
            text += f" of {formula!r}"
        super().__init__(text)


# ----------------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class Token:
    """One lexical token; ``pos`` is the 0-based index in the formula."""

    kind: str          # NAME NUMBER CALL OP EOF
    text: str          # the source text (a whole call for CALL)
    pos: int
    func: str = ""     # CALL: the function name
    args: str = ""     # CALL: the raw text between the parentheses
    args_pos: int = 0  # CALL: where that text starts

    @property
    def end(self) -> int:
        return self.pos + len(self.text)


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*|\.[A-Za-z_][A-Za-z0-9_.]*|\.")
_NUMBER_RE = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_OPS = ("||", "**", "~", "+", "-", "*", "/", ":", "^", "|", "(", ")")


def _matching_paren(text: str, open_pos: int, formula: str) -> int:
    """Index of the ``)`` closing the ``(`` at ``open_pos``; quotes are skipped."""
    depth, i, quote = 0, open_pos, None
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"`":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise FormulaError("unclosed '('", formula, open_pos + 1)


def tokenize(formula: str) -> list[Token]:
    """Split a formula into tokens; a name followed by ``(`` becomes one CALL token.

    Raises
    ------
    FormulaError
        On a character that has no meaning in a formula or an unclosed call.
    """
    tokens: list[Token] = []
    i, n = 0, len(formula)
    while i < n:
        ch = formula[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "`":
            j = formula.find("`", i + 1)
            if j < 0:
                raise FormulaError("unclosed '`'", formula, i + 1)
            tokens.append(Token("NAME", formula[i:j + 1], i))
            i = j + 1
            continue
        m = _NUMBER_RE.match(formula, i) if (ch.isdigit() or
                                             (ch == "." and formula[i + 1:i + 2].isdigit())) else None
        if m:
            tokens.append(Token("NUMBER", m.group(), i))
            i = m.end()
            continue
        m = _NAME_RE.match(formula, i)
        if m:
            j = m.end()
            k = j
            while k < n and formula[k].isspace():
                k += 1
            # "x (1 | g)" is a missing operator, not a call of x; "log (x)" is a call
            if k < n and formula[k] == "(" and (k == j or m.group() in _CALLABLE):
                close = _matching_paren(formula, k, formula)
                tokens.append(Token("CALL", formula[i:close + 1], i, func=m.group(),
                                    args=formula[k + 1:close], args_pos=k + 1))
                i = close + 1
            else:
                tokens.append(Token("NAME", m.group(), i))
                i = j
            continue
        if formula.startswith("%in%", i):
            raise FormulaError("'%in%' is not supported; write a:b or a/b", formula, i + 1)
        op = next((o for o in _OPS if formula.startswith(o, i)), None)
        if op is None:
            raise FormulaError(f"unexpected character {ch!r}", formula, i + 1)
        tokens.append(Token("OP", "^" if op == "**" else op, i))
        i += len(op)
    tokens.append(Token("EOF", "", n))
    return tokens


def _starts_operand(tok: Token) -> bool:
    return tok.kind in _OPERAND_KINDS or tok.text == "("


def _ends_operand(tok: Token) -> bool:
    return tok.kind in _OPERAND_KINDS or tok.text == ")"


def _check_structure(tokens: list[Token], formula: str) -> None:
    """Whole-string checks made before parsing: parentheses, adjacency, one ``~``."""
    stack: list[Token] = []
    for tok in tokens:
        if tok.text == "(" and tok.kind == "OP":
            stack.append(tok)
        elif tok.text == ")" and tok.kind == "OP":
            if not stack:
                raise FormulaError("unbalanced ')'", formula, tok.pos + 1)
            stack.pop()
    if stack:
        raise FormulaError("unclosed '('", formula, stack[-1].pos + 1)
    for prev, tok in zip(tokens, tokens[1:]):
        if _ends_operand(prev) and _starts_operand(tok):
            raise FormulaError(f"missing operator between {prev.text!r} and {tok.text!r}",
                               formula, tok.pos + 1)
    tildes = [t for t in tokens if t.text == "~" and t.kind == "OP"]
    if not tildes:
        raise FormulaError("a formula needs one '~' between the response and the terms",
                           formula)
    if len(tildes) > 1:
        raise FormulaError("more than one '~'", formula, tildes[1].pos + 1)


# ----------------------------------------------------------------------------- python expressions
