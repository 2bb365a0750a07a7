"""The formula reader: R's term algebra, and strict errors that name the place."""
import pytest

from jaxglmm.formula import FormulaError, parse_formula


def fixed_names(formula):
    return [":".join(atom.display for atom in term) for term in parse_formula(formula).fixed]


def random_summary(formula):
    return [(r.group_name, r.intercept, [":".join(a.display for a in t) for t in r.terms],
             r.correlated) for r in parse_formula(formula).random]


# ----------------------------------------------------------------------------- term algebra
@pytest.mark.parametrize("formula, terms, intercept", [
    ("y ~ x", ["x"], True),
    ("y ~ 1", [], True),
    ("y ~ 0 + x", ["x"], False),
    ("y ~ x - 1", ["x"], False),
    ("y ~ -1 + x", ["x"], False),
    ("y ~ x + 0", ["x"], False),
    ("y ~ 0 + x + 1", ["x"], True),
    ("y ~ a*b", ["a", "b", "a:b"], True),
    ("y ~ a:b", ["a:b"], True),
    ("y ~ a*b + a*c", ["a", "b", "c", "a:b", "a:c"], True),
    ("y ~ a + b + a:b + b:a + a", ["a", "b", "a:b"], True),
    ("y ~ a*b*c", ["a", "b", "c", "a:b", "a:c", "b:c", "a:b:c"], True),
    ("y ~ (a + b + c)^2", ["a", "b", "c", "a:b", "a:c", "b:c"], True),
    ("y ~ (a + b + c)**2", ["a", "b", "c", "a:b", "a:c", "b:c"], True),
    ("y ~ (a + b)^2 - a:b", ["a", "b"], True),
    ("y ~ a/b", ["a", "a:b"], True),
    ("y ~ (a + b)/c", ["a", "b", "a:b:c"], True),
    ("y ~ a:a", ["a"], True),
])
def test_term_algebra(formula, terms, intercept):
    assert fixed_names(formula) == terms
    assert parse_formula(formula).intercept is intercept


@pytest.mark.parametrize("formula, names", [
    ("y ~ scale(x) + log(x) + exp(x) + sqrt(x)", ["scale(x)", "log(x)", "exp(x)", "sqrt(x)"]),
    ("y ~ I(age^2)", ["I(age^2)"]),
    ("y ~ I(age ^ 2) + I(age**3)", ["I(age^2)", "I(age ** 3)"]),
    ("y ~ log(x+1)", ["log(x + 1)"]),
    ("y ~ C(k) + factor(j)", ["C(k)", "factor(j)"]),
    ("y ~ log (x)", ["log(x)"]),
    ("y ~ poly(x, 2)", ["poly(x, 2)"]),
    ("y ~ scale(x)*f", ["scale(x)", "f", "scale(x):f"]),
    ("y ~ `my col` + my.col", ["my col", "my.col"]),
])
def test_transform_atoms(formula, names):
    assert fixed_names(formula) == names


def test_atom_kinds_and_poly_arguments():
    p = parse_formula("y ~ scale(x) + center(x) + I(x^2) + C(k) + poly(x, degree = 3, raw=TRUE)")
    kinds = [t[0].kind for t in p.fixed]
    assert kinds == ["scale", "center", "math", "factor", "poly"]
    poly = p.fixed[-1][0]
    assert (poly.degree, poly.raw, poly.names) == (3, True, ("x",))
    assert p.fixed[2][0].expr.code == "I(x**2)"


def test_offset_is_not_a_term():
    p = parse_formula("y ~ x + offset(log(n))")
    assert fixed_names("y ~ x + offset(log(n))") == ["x"]
    assert [o.code for o in p.offsets] == ["log(n)"]
    assert p.offsets[0].names == ("n",)


# ----------------------------------------------------------------------------- responses
def test_plain_and_transformed_response():
    p = parse_formula("log(y) ~ x")
    assert p.response.kind == "plain" and p.response.names == ("y",)
    assert p.response.text == "log(y)"


def test_cbind_response():
    r = parse_formula("cbind(incidence, size - incidence) ~ period").response
    assert r.kind == "cbind"
    assert [e.code for e in r.exprs] == ["'incidence'", "size - incidence"]
    assert r.names == ("incidence", "size")


def test_trials_response():
    r = parse_formula("s | trials(n) ~ x").response
    assert r.kind == "trials" and r.text == "s"
    assert [e.column for e in r.exprs] == ["s", "n"]


# ----------------------------------------------------------------------------- random terms
@pytest.mark.parametrize("formula, expected", [
    ("y ~ (1 + x | g)", [("g", True, ["x"], True)]),
    ("y ~ (x | g)", [("g", True, ["x"], True)]),
    ("y ~ (0 + x | g)", [("g", False, ["x"], True)]),
    ("y ~ (x || g)", [("g", True, [], False), ("g", False, ["x"], False)]),
    ("y ~ (1 + x + z || g)",
     [("g", True, [], False), ("g", False, ["x"], False), ("g", False, ["z"], False)]),
    ("y ~ (1 | a/b)", [("a", True, [], True), ("a:b", True, [], True)]),
    ("y ~ (1 | a/b/c)",
     [("a", True, [], True), ("a:b", True, [], True), ("a:b:c", True, [], True)]),
    ("y ~ (1 | a:b)", [("a:b", True, [], True)]),
    ("y ~ (1 | a) + (1 | b)", [("a", True, [], True), ("b", True, [], True)]),
    ("y ~ (1 + period | herd)", [("herd", True, ["period"], True)]),
    ("y ~ (1 | g) + (0 + x | g)", [("g", True, [], True), ("g", False, ["x"], True)]),
    ("y ~ (1 + a*b | g)", [("g", True, ["a", "b", "a:b"], True)]),
])
def test_random_terms(formula, expected):
    assert random_summary(formula) == expected
    assert parse_formula(formula).fixed == ()


def test_random_terms_do_not_touch_fixed_part():
    p = parse_formula("Reaction ~ Days + (Days | Subject)")
    assert fixed_names("Reaction ~ Days + (Days | Subject)") == ["Days"]
    assert p.columns == ("Reaction", "Days", "Subject")


# ----------------------------------------------------------------------------- strict errors
SEED = ("student_reading_score ~ student_age_s + student_female "
        "student_re_black*teacher_re_black + student_re_black*class_prop_black "
        "+ (1 + student_re_black | teacher_id)")


def test_missing_operator_in_seed_formula_names_the_place():
    with pytest.raises(FormulaError) as info:
        parse_formula(SEED)
    msg = str(info.value)
    assert "missing operator between 'student_female' and 'student_re_black'" in msg
    assert f"at column {SEED.index('student_re_black*') + 1}" in msg
    assert info.value.column == SEED.index("student_re_black*") + 1


@pytest.mark.parametrize("formula, message", [
    ("y ~ x  z + (1 | g)", "missing operator between 'x' and 'z' at column 8"),
    ("y ~ x (1 | g)", "missing operator between 'x' and '('"),
    ("y ~ (1 | g) (1 | h)", "missing operator between ')' and '('"),
    ("y ~ log(x) z", "missing operator between 'log(x)' and 'z'"),
    ("y ~ x + 2 z", "missing operator between '2' and 'z'"),
    ("y z ~ x", "missing operator between 'y' and 'z'"),
    ("y ~ (x + z", "unclosed '(' at column 5"),
    ("y ~ x + z)", "unbalanced ')' at column 10"),
    ("y ~ log(x", "unclosed '('"),
    ("y ~ x + ", "empty term after '+' (nothing follows)"),
    ("y ~ x + + z", "empty term after '+'"),
    ("y ~ x * ", "empty term after '*'"),
    ("y ~ ", "nothing on the right of '~'"),
    ("~ x", "no response on the left of '~'"),
    ("y x", "missing operator"),
    ("y + x", "a formula needs one '~'"),
    ("y ~ x ~ z", "more than one '~' at column 7"),
    ("y ~ (1 + x | )", "nothing on the right of '|'"),
    ("y ~ ( | g)", "nothing on the left of '|'"),
    ("y ~ (|| g)", "nothing on the left of '||'"),
    ("y ~ x | g", "'|' outside parentheses"),
    ("y ~ foo(x)", "unknown function 'foo'; known: log, log2"),
    ("y ~ log(foo(x))", "unknown function 'foo'"),
    ("y ~ np.foo(x)", "unknown function 'np.foo'"),
    ("y ~ x & z", "unexpected character '&' at column 7"),
    ("y ~ x %in% z", "'%in%' is not supported"),
    ("y ~ x^2", "write I(x^2) for a power"),
    ("y ~ 2 + x", "the number 2 cannot be a term"),
    ("y ~ .", "'.' (all other columns) is not supported"),
    ("y ~ (1 | a + b)", "cannot use 'a + b' as a grouping factor"),
    ("y ~ (1 | log(g))", "cannot use 'log(g)' as a grouping factor"),
    ("y ~ x*(1 | g)", "a random term cannot be used with '*'"),
    ("y ~ x:offset(z)", "offset() cannot be used with ':'"),
    ("y ~ (0 | g)", "has no columns"),
    ("y ~ cbind(a, b)", "cbind() belongs on the left of '~'"),
    ("cbind(a) ~ x", "cbind() takes two arguments"),
    ("y | weights(w) ~ x", "unsupported addition term 'weights(w)'"),
    ("y | ~ x", "nothing on the right of '|'"),
    ("scale(x, 2) ~ x", "unknown function 'scale'"),
    ("y ~ scale(x, 2)", "scale() takes 1 unnamed argument(s)"),
    ("y ~ poly(x, 0)", "poly() needs a whole-number degree"),
    ("y ~ log(x +)", "cannot read term"),
])
def test_bad_formulas_raise_formula_error(formula, message):
    with pytest.raises(FormulaError) as info:
        parse_formula(formula)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_error_column_is_recorded():
    with pytest.raises(FormulaError) as info:
        parse_formula("y ~ foo(x)")
    assert info.value.column == 5 and info.value.formula == "y ~ foo(x)"


def test_formula_must_be_a_string():
    with pytest.raises(FormulaError, match="must be a string"):
        parse_formula(None)


def test_mentioned_identifiers_are_found_without_the_parser():
    p = parse_formula("cbind(s, n - s) ~ poly(x, degree=2) + log(z) + (1 | g)")
    assert p.mentioned == ("s", "n", "x", "z", "g")
