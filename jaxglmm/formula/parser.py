"""Formula stage: a strict reader for lme4/brms model formulas.

The reader turns a formula string into a :class:`ParsedFormula`, a data-independent record of
the response, the fixed-effect terms, the offsets and the random-effect terms.  It checks the
whole string before anything reaches :mod:`formulae`, because formulae 0.9 silently drops
whatever follows a missing operator (``y ~ x  z + (1 | g)`` becomes ``y ~ x``).  Every problem
is a :class:`FormulaError` that names the place:

>>> parse_formula("y ~ x  z")
Traceback (most recent call last):
...
jaxglmm.formula.FormulaError: missing operator between 'x' and 'z' at column 8 of 'y ~ x  z'

Supported syntax (R's meaning throughout):

* ``+``, ``-``, ``:``, ``*`` (main effects plus interaction), ``/`` (``a/b`` is ``a + a:b``),
  ``(a + b + c)^2`` (all interactions up to order two), ``0 +`` / ``- 1`` / ``+ 1``;
* transforms ``scale(x)``, ``center(x)``, ``log(x)``, ``log2``, ``log10``, ``log1p``,
  ``exp``, ``expm1``, ``sqrt``, ``abs``, ``I(age^2)`` (``^`` is a power inside calls),
  ``C(x)`` / ``factor(x)``, ``poly(x, 2)`` (orthogonal, as R's ``poly``), ``offset(expr)``;
* responses ``y``, ``log(y)``, ``cbind(successes, failures)`` and ``successes | trials(n)``;
* random terms ``(1 + x | g)``, ``(x || g)`` (split into ``(1 | g)`` and ``(0 + x | g)``),
  ``(1 | a/b)`` (``(1 | a) + (1 | a:b)``), ``(1 | a:b)``, ``(0 + x | g)``.

Data are looked at later, in :mod:`jaxglmm.design`.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from .pyexpr import python_expr, pythonize
from .terms import Atom, PyExpr, Term, r_text, term_key
from .tokens import (_OPERAND_KINDS, MATH_FUNCTIONS, TRANSFORMS, FormulaError, Token,
                     _check_structure, tokenize)

__all__ = ["FormulaError", "Atom", "PyExpr", "RandomSpec", "ResponseSpec",
           "ParsedFormula", "parse_formula", "MATH_FUNCTIONS", "TRANSFORMS"]

# ----------------------------------------------------------------------------- terms
@dataclass(frozen=True)
class RandomSpec:
    """One random-effect term after expanding ``||`` and ``/``.

    Attributes
    ----------
    terms: model terms on the left of the bar (without the intercept).
    intercept: whether the left side has an intercept.
    group: the grouping columns (``("batch", "cask")`` for ``batch:cask``).
    correlated: False for a term split out of ``||``.
    source: the text of the bar term as written, for messages.
    id: brms's correlation ID of ``(terms | ID | g)``, else None.
    """

    terms: tuple[Term, ...]
    intercept: bool
    group: tuple[str, ...]
    correlated: bool
    source: str
    id: str | None = None

    @property
    def group_name(self) -> str:
        return ":".join(self.group)


@dataclass(frozen=True)
class ResponseSpec:
    """The left-hand side.

    Attributes
    ----------
    kind: ``"plain"``, ``"cbind"`` (successes, failures) or ``"trials"`` (successes, trials).
    exprs: one expression (plain) or two.
    text: the left-hand side as written, used as the response name.
    """

    kind: str
    exprs: tuple[PyExpr, ...]
    text: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for e in self.exprs for n in e.names))


@dataclass(frozen=True)
class ParsedFormula:
    """A formula read into its parts; see :func:`parse_formula`."""

    formula: str
    response: ResponseSpec
    intercept: bool
    fixed: tuple[Term, ...]
    offsets: tuple[PyExpr, ...]
    random: tuple[RandomSpec, ...]
    mentioned: tuple[str, ...] = field(default_factory=tuple)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the formula reads, in order of first use."""
        cols: list[str] = list(self.response.names)
        for term in self.fixed:
            cols += [n for a in term for n in a.names]
        cols += [n for e in self.offsets for n in e.names]
        for r in self.random:
            cols += [n for t in r.terms for a in t for n in a.names] + list(r.group)
        return tuple(dict.fromkeys(cols))


# ----------------------------------------------------------------------------- parser
@dataclass
class _Node:
    kind: str                 # name call num op neg paren bar
    tok: Token
    children: tuple = ()
    start: int = 0
    end: int = 0


class _Parser:
    """Recursive descent over R's formula operators.

    Precedence, loosest first: ``|``/``||`` (inside parentheses), ``+ -``, ``* /``, ``:``,
    ``^``.
    """

    def __init__(self, tokens: list[Token], formula: str):
        self.toks, self.i, self.formula = tokens, 0, formula

    def peek(self) -> Token:
        return self.toks[self.i]

    def take(self) -> Token:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def error(self, message: str, tok: Token) -> FormulaError:
        return FormulaError(message, self.formula, tok.pos + 1)

    def parse_sum(self) -> _Node:
        tok = self.peek()
        if tok.text in ("+", "-") and tok.kind == "OP":  # a leading sign: "-1 + x"
            self.take()
            node = self.parse_prod(tok)
            first = _Node("neg", tok, (node,), tok.pos, node.end) if tok.text == "-" else node
            return self.binary(("+", "-"), self.parse_prod, None, first)
        return self.binary(("+", "-"), self.parse_prod, None)

    def parse_prod(self, after) -> _Node:
        return self.binary(("*", "/"), self.parse_inter, after)

    def parse_inter(self, after) -> _Node:
        return self.binary((":",), self.parse_power, after)

    def binary(self, ops, operand, after, left: _Node | None = None) -> _Node:
        """Left-associative chain ``operand (op operand)*``."""
        left = operand(after) if left is None else left
        while self.peek().kind == "OP" and self.peek().text in ops:
            op = self.take()
            right = operand(op)
            left = _Node("op", op, (left, right), left.start, right.end)
        return left

    def parse_power(self, after) -> _Node:
        base = self.parse_atom(after)
        if self.peek().text == "^" and self.peek().kind == "OP":
            op = self.take()
            exp = self.take()
            if exp.kind != "NUMBER" or not exp.text.isdigit() or int(exp.text) < 1:
                raise self.error("'^' in a formula needs a positive whole number after it", op)
            return _Node("op", op, (base, _Node("num", exp, (), exp.pos, exp.end)),
                         base.start, exp.end)
        return base

    def parse_atom(self, after) -> _Node:
        tok = self.peek()
        if tok.kind in _OPERAND_KINDS:
            self.take()
            return _Node({"NAME": "name", "NUMBER": "num", "CALL": "call"}[tok.kind], tok, (),
                         tok.pos, tok.end)
        if tok.text == "(":
            self.take()
            if self.peek().text in ("|", "||"):
                raise self.error(f"nothing on the left of {self.peek().text!r}", self.peek())
            if self.peek().text == ")":
                raise self.error("empty parentheses", tok)
            inner = self.parse_sum()
            if self.peek().text in ("|", "||"):
                bar = self.take()
                if self.peek().text == ")":
                    raise self.error(f"nothing on the right of {bar.text!r}", bar)
                group = self.parse_sum()
                children = (inner, group)
                if bar.text == "|" and self.peek().text == "|":
                    # brms's (terms | ID | g): terms sharing an ID are correlated
                    bar2 = self.take()
                    if self.peek().text == ")":
                        raise self.error("nothing on the right of '|'", bar2)
                    children = (inner, self.parse_sum(), group)
                inner = _Node("bar", bar, children, inner.start, children[1].end)
            close = self.take()
            if close.text != ")":
                raise self.error(f"unexpected {close.text or 'end of formula'!r}", close)
            return _Node("paren", tok, (inner,), tok.pos, close.end)
        where = f"after {after.text!r}" if after is not None else "here"
        if tok.kind == "EOF":
            raise self.error(f"empty term {where} (nothing follows)", after or tok)
        if tok.text in ("|", "||"):
            raise self.error(f"{tok.text!r} outside parentheses; write random terms as "
                             "(1 + x | g)", tok)
        raise self.error(f"empty term {where}: {tok.text!r} cannot start a term", tok)


# ----------------------------------------------------------------------------- expansion
@dataclass
class _Expansion:
    """What a sub-formula contributes: terms, an intercept setting, bars and offsets."""

    terms: list
    intercept: bool | None = None
    random: list = field(default_factory=list)
    offsets: list = field(default_factory=list)

    @property
    def plain(self) -> bool:
        return self.intercept is None and not self.random and not self.offsets


def _merge(a: Term, b: Term) -> Term:
    keys = {x.key for x in a}
    return tuple(a) + tuple(x for x in b if x.key not in keys)


def _union(*lists) -> list:
    seen, out = set(), []
    for terms in lists:
        for t in terms:
            k = term_key(t)
            if k not in seen:
                seen.add(k)
                out.append(t)
    return out


def _product(a: list, b: list) -> list:
    return _union([_merge(x, y) for x in a for y in b])


def _display(code: str, caret: bool) -> str:
    """Canonical label of a call, spaced as R deparses it (``I(x^2)``, ``log(x + 1)``)."""
    text = ast.unparse(ast.parse(code, mode="eval"))
    return r_text(text.replace(" ** ", "^") if caret else text)


class _Expander:
    """Turns parse nodes into terms with R's formula algebra."""

    def __init__(self, formula: str):
        self.formula = formula

    def error(self, message: str, node: _Node) -> FormulaError:
        return FormulaError(message, self.formula, node.tok.pos + 1)

    def text(self, node: _Node) -> str:
        return self.formula[node.start:node.end]

    def expand(self, node: _Node) -> _Expansion:
        kind = node.kind
        if kind == "name":
            return _Expansion([(self.column_atom(node),)])
        if kind == "call":
            return self.call(node)
        if kind == "num":
            if node.tok.text not in ("0", "1"):
                raise self.error(f"the number {node.tok.text} cannot be a term (only 0 and 1 "
                                 "set the intercept)", node)
            return _Expansion([], intercept=node.tok.text == "1")
        if kind == "paren":
            inner = node.children[0]
            return self.bar(inner) if inner.kind == "bar" else self.expand(inner)
        if kind == "bar":
            return self.bar(node)
        if kind == "neg":
            child = node.children[0]
            if child.kind != "num" or child.tok.text not in ("0", "1"):
                raise self.error(f"a leading '-' can only remove the intercept ('-1'), not "
                                 f"{self.text(child)!r}", node)
            return _Expansion([], intercept=child.tok.text == "0")
        return self.operator(node)

    def column_atom(self, node: _Node) -> Atom:
        name = node.tok.text
        if name == ".":
            raise self.error("'.' (all other columns) is not supported; name the columns", node)
        if name.startswith("`"):
            name = name[1:-1]
        return Atom("column", name, PyExpr.of_column(name))

    def call(self, node: _Node) -> _Expansion:
        tok = node.tok
        func = tok.func[3:] if tok.func.startswith("np.") else tok.func
        if tok.func == "offset":
            return _Expansion([], offsets=[self.args(node, 1, "offset")[0]])
        if tok.func in ("cbind", "trials"):
            raise self.error(f"{tok.func}() belongs on the left of '~'", node)
        if func not in TRANSFORMS or (tok.func.startswith("np.") and func not in MATH_FUNCTIONS):
            raise self.error(f"unknown function {tok.func!r}; known: {', '.join(TRANSFORMS)}",
                             node)
        if func in MATH_FUNCTIONS or func == "I":
            expr = python_expr(tok.text, tok.pos, self.formula, what="term")
            return _Expansion([(Atom("math", self.display(tok), expr),)])
        display = self.display(tok)
        if func == "poly":
            return _Expansion([(self.poly(node, display),)])
        inner = self.args(node, 1, func)[0]
        kind = {"scale": "scale", "center": "center", "C": "factor", "factor": "factor"}[func]
        return _Expansion([(Atom(kind, display, inner),)])

    def display(self, tok: Token) -> str:
        try:
            return _display(pythonize(tok.text), "^" in tok.args)
        except SyntaxError:
            raise FormulaError(f"cannot read term {tok.text!r}", self.formula,
                               tok.pos + 1) from None

    def args(self, node: _Node, count: int, func: str) -> list[PyExpr]:
        parts = _split_args(node.tok.args)
        if len(parts) != count or any("=" in p and not re.search(r"[=!<>]=", p)
                                      for p, _ in parts):
            raise self.error(f"{func}() takes {count} unnamed argument(s) here", node)
        return [python_expr(p, node.tok.args_pos + off, self.formula, what=f"{func}() argument")
                for p, off in parts]

    def poly(self, node: _Node, display: str) -> Atom:
        tree = ast.parse(pythonize(node.tok.text), mode="eval").body
        values = dict(zip(("x", "degree", "raw"), tree.args))
        values.update({k.arg: k.value for k in tree.keywords})
        if set(values) - {"x", "degree", "raw"} or "x" not in values:
            raise self.error("poly() takes (x, degree, raw=FALSE)", node)
        degree = values.get("degree", ast.Constant(1))
        raw = values.get("raw", ast.Constant(False))
        if not (isinstance(degree, ast.Constant) and isinstance(degree.value, int)
                and degree.value >= 1) or not (isinstance(raw, ast.Constant)
                                               and isinstance(raw.value, bool)):
            raise self.error("poly() needs a whole-number degree and raw=TRUE/FALSE", node)
        x_text = ast.unparse(values["x"])
        inner = python_expr(x_text, node.tok.args_pos, self.formula, what="poly() argument")
        return Atom("poly", display, inner, degree=degree.value, raw=raw.value)

    def operator(self, node: _Node) -> _Expansion:
        op = node.tok.text
        left_node, right_node = node.children
        left = self.expand(left_node)
        if op == "^":
            k = int(right_node.tok.text)
            self.require_plain(left, left_node, op)
            if len(left.terms) == 1 and len(left.terms[0]) == 1:
                atom = left.terms[0][0].display
                raise self.error(f"{self.text(node)!r} in a formula means the interactions of "
                                 f"{atom} with itself; write I({atom}^{k}) for a power", node)
            result = list(left.terms)
            for _ in range(k - 1):
                result = _union(result, _product(result, left.terms))
            return _Expansion(result)
        right = self.expand(right_node)
        if op == "+":
            return _Expansion(_union(left.terms, right.terms),
                              right.intercept if right.intercept is not None else left.intercept,
                              left.random + right.random, left.offsets + right.offsets)
        if op == "-":
            if right.random or right.offsets:
                raise self.error(f"cannot remove {self.text(right_node)!r} with '-'", node)
            drop = {term_key(t) for t in right.terms}
            intercept = left.intercept if right.intercept is None else not right.intercept
            return _Expansion([t for t in left.terms if term_key(t) not in drop], intercept,
                              left.random, left.offsets)
        self.require_plain(left, left_node, op)
        self.require_plain(right, right_node, op)
        if op == ":":
            return _Expansion(_product(left.terms, right.terms))
        if op == "*":
            return _Expansion(_union(left.terms, right.terms,
                                     _product(left.terms, right.terms)))
        # a/b is a + a:b, with every factor of the left side in the nested terms
        outer: Term = ()
        for term in left.terms:
            outer = _merge(outer, term)
        return _Expansion(_union(left.terms, _product([outer], right.terms)))

    def require_plain(self, exp: _Expansion, node: _Node, op: str) -> None:
        if exp.plain:
            return
        what = ("a random term" if exp.random else "offset()" if exp.offsets
                else f"{self.text(node)!r}")
        raise self.error(f"{what} cannot be used with {op!r}", node)

    def bar(self, node: _Node) -> _Expansion:
        lhs_node, group_node = node.children[:2]
        corr_id = None
        if len(node.children) == 3:
            id_node = node.children[2]
            if id_node.kind != "name":
                raise self.error("the ID in (terms | ID | g) must be a plain name", id_node)
            corr_id = id_node.tok.text
        lhs = self.expand(lhs_node)
        if lhs.random or lhs.offsets:
            raise self.error("random terms and offsets cannot be nested in a random term",
                             lhs_node)
        intercept = True if lhs.intercept is None else lhs.intercept
        source = "(" + self.text(node) + ")"
        if not lhs.terms and not intercept:
            raise self.error(f"random term {source!r} has no columns", node)
        specs = []
        for group in self.groups(group_node, source):
            if node.tok.text == "|":
                specs.append(RandomSpec(tuple(lhs.terms), intercept, group, True, source, corr_id))
                continue
            if intercept:
                specs.append(RandomSpec((), True, group, False, source))
            specs += [RandomSpec((t,), False, group, False, source) for t in lhs.terms]
        return _Expansion([], random=specs)

    def groups(self, node: _Node, source: str) -> list[tuple[str, ...]]:
        if node.kind == "name":
            return [(self.column_atom(node).display,)]
        if node.kind == "paren" and node.children[0].kind != "bar":
            return self.groups(node.children[0], source)
        if node.kind == "op" and node.tok.text in (":", "/"):
            left = self.groups(node.children[0], source)
            right = self.groups(node.children[1], source)
            if node.tok.text == ":":
                return [tuple(dict.fromkeys(a + b)) for a in left for b in right]
            outer = tuple(dict.fromkeys(c for g in left for c in g))
            return left + [tuple(dict.fromkeys(outer + b)) for b in right]
        raise self.error(f"cannot use {self.text(node)!r} as a grouping factor in {source}; "
                         "write g, a:b or a/b (crossed factors are (1 | a) + (1 | b))", node)


def _split_args(args: str) -> list[tuple[str, int]]:
    """Split call arguments at top-level commas: ``[(text, offset), ...]``."""
    parts, depth, start, quote = [], 0, 0, None
    for i, ch in enumerate(args):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"`":
            quote = ch
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append((args[start:i], start))
            start = i + 1
    parts.append((args[start:], start))
    return [(p, off) for p, off in parts if p.strip() or len(parts) > 1]


# ----------------------------------------------------------------------------- response
def _parse_response(tokens: list[Token], formula: str) -> ResponseSpec:
    if not tokens:
        raise FormulaError("no response on the left of '~'", formula, 1)
    bars = [i for i, t in enumerate(tokens) if t.kind == "OP" and t.text in ("|", "||")]
    if any(tokens[i].text == "||" for i in bars) or len(bars) > 1:
        raise FormulaError("the response takes at most one '|' (as in y | trials(n))",
                           formula, tokens[bars[-1]].pos + 1)
    main = tokens[:bars[0]] if bars else tokens
    if not main:
        raise FormulaError("nothing on the left of '|'", formula, tokens[0].pos + 1)
    text = formula[main[0].pos:main[-1].end]
    if len(main) == 1 and main[0].kind == "CALL" and main[0].func == "cbind":
        tok = main[0]
        parts = _split_args(tok.args)
        if len(parts) != 2:
            raise FormulaError("cbind() takes two arguments: successes and failures",
                               formula, tok.pos + 1)
        exprs = tuple(python_expr(p, tok.args_pos + off, formula, what="cbind() argument")
                      for p, off in parts)
        kind = "cbind"
    else:
        exprs = (python_expr(text, main[0].pos, formula, what="response"),)
        kind = "plain"
    if bars:
        extra = tokens[bars[0] + 1:]
        if not extra:
            raise FormulaError("nothing on the right of '|'", formula, tokens[bars[0]].pos + 1)
        tok = extra[0]
        if len(extra) != 1 or tok.kind != "CALL" or tok.func != "trials":
            what = formula[tok.pos:extra[-1].end]
            raise FormulaError(f"unsupported addition term {what!r}; only trials(n) is "
                               "understood", formula, tok.pos + 1)
        if kind == "cbind":
            raise FormulaError("use either cbind() or trials(), not both", formula,
                               tok.pos + 1)
        parts = _split_args(tok.args)
        if len(parts) != 1:
            raise FormulaError("trials() takes one argument", formula, tok.pos + 1)
        trials = python_expr(parts[0][0], tok.args_pos, formula, what="trials() argument")
        exprs, kind = exprs + (trials,), "trials"
    return ResponseSpec(kind, exprs, text)


# ----------------------------------------------------------------------------- entry point
def _mentioned(tokens: list[Token]) -> tuple[str, ...]:
    """Every identifier written in the formula, found without the parser (a cross-check)."""
    found: list[str] = []
    for tok in tokens:
        if tok.kind == "NAME":
            found.append(tok.text.strip("`"))
        elif tok.kind == "CALL":
            args = re.sub(r"'[^']*'|\"[^\"]*\"", " ", tok.args)
            for m in re.finditer(r"`([^`]+)`|(?<![\w.])([A-Za-z_.][\w.]*)\s*(\(|=(?!=))?", args):
                if m.group(1):
                    found.append(m.group(1))
                elif m.group(3) is None:
                    found.append(m.group(2))
    return tuple(dict.fromkeys(found))


def parse_formula(formula: str) -> ParsedFormula:
    """Read an lme4/brms formula strictly.

    Parameters
    ----------
    formula:
        For example ``"cbind(incidence, size - incidence) ~ period + (1 | herd)"``.

    Returns
    -------
    ParsedFormula
        Response, intercept flag, fixed terms in R's order: by degree, then in order of
        first appearance (``a*b + c`` gives ``a``, ``b``, ``c``, ``a:b``; a repeated term is
        kept once), offsets and random terms
        (``||`` and ``/`` already expanded, as lme4 expands them).

    Raises
    ------
    FormulaError
        For anything that is not a complete, well-formed formula: a missing ``~`` or
        operator, unbalanced parentheses, an empty term, an unknown function, a bar with an
        empty side, a grouping factor that is not a column, ``a:b`` or ``a/b``.

    Examples
    --------
    >>> p = parse_formula("y ~ a*b + (x || g)")
    >>> [":".join(atom.display for atom in term) for term in p.fixed]
    ['a', 'b', 'a:b']
    >>> [(r.group_name, r.intercept, len(r.terms)) for r in p.random]
    [('g', True, 0), ('g', False, 1)]
    """
    if not isinstance(formula, str):
        raise FormulaError(f"a formula must be a string, not {type(formula).__name__}")
    tokens = tokenize(formula)
    _check_structure(tokens, formula)
    tilde = next(i for i, t in enumerate(tokens) if t.kind == "OP" and t.text == "~")
    response = _parse_response(tokens[:tilde], formula)
    rhs = tokens[tilde + 1:]
    if rhs[0].kind == "EOF":
        raise FormulaError("nothing on the right of '~'", formula, tokens[tilde].pos + 1)
    parser = _Parser(rhs, formula)
    node = parser.parse_sum()
    rest = parser.peek()
    if rest.kind != "EOF":
        if rest.text in ("|", "||"):
            raise parser.error(f"{rest.text!r} outside parentheses; write random terms as "
                               "(1 + x | g)", rest)
        raise parser.error(f"unexpected {rest.text!r}", rest)
    expansion = _Expander(formula).expand(node)
    intercept = True if expansion.intercept is None else expansion.intercept
    # R's order (terms.formula): by degree, then as they first appear, so that ``a:b + a``
    # codes ``a`` first and ``a:b`` against it, as model.matrix does
    fixed = tuple(sorted(expansion.terms, key=len))
    return ParsedFormula(formula, response, intercept, fixed,
                         tuple(expansion.offsets), tuple(expansion.random),
                         _mentioned(tokens))
