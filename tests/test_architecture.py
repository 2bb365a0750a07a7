"""The house rules of docs/architecture.md, checked from the source: the stages import one way
(import-linter's layers contract in pyproject.toml), the module import graph has no cycles, no
module imports jaxglmm code inside a function (the way cycles used to be dodged) but the
conveniences that call jaxglmm.inference, and no
module grows past 600 lines."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxglmm"
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    """The jaxglmm modules an ``import``/``from ... import`` statement names."""
    if node.level:
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    return [target] + [f"{target}.{a.name}" for a in node.names]


def _imports(module: str, path: Path, known: set[str]):
    """(top-level targets, function-local targets) among jaxglmm's modules."""
    tree = ast.parse(path.read_text())
    top, local = set(), []

    def targets(node):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = _resolve(module, path, node)
        else:
            return []
        return [n for n in names if n in known]

    for node in tree.body:
        top.update(targets(node))
        if isinstance(node, (ast.If, ast.Try)):
            for sub in ast.walk(node):
                top.update(targets(sub))
    def inside(node, scope):
        """Imports in the functions below ``node``, with the qualified name of the function
        (``Class.method``) each is in."""
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = ".".join(scope + (child.name,))
                if not isinstance(child, ast.ClassDef):
                    for sub in ast.walk(child):
                        for target in targets(sub):
                            local.append((target, sub.lineno, name))
                else:
                    inside(child, scope + (child.name,))

    inside(tree, ())
    top.discard(module)
    return top, local


def _graph():
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def test_layers_contract_is_kept():
    from importlinter import configuration
    from importlinter.application.use_cases import lint_imports
    configuration.configure()        # what the lint-imports command does first
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_logo=True), \
        "a stage imports one above it (see the lint-imports report above)"


def test_import_graph_has_no_cycles():
    graph = {m: {t for t in top if t != m and not m.startswith(t + ".")}
             for m, (top, _) in _graph().items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


# The one exception: FitResult's conveniences for inference's free functions (and
# Model.fit_fn), which sit below jaxglmm.inference and import it when called, as
# ``from .. import inference`` (which names the package and jaxglmm.inference).
LOCAL_IMPORTS_ALLOWED = {
    ("jaxglmm.results.result", f"FitResult.{name}")
    for name in ("bootstrap", "confint", "power", "influence", "cooks_distance", "hatvalues",
                 "leave_one_out", "sensitivity", "coef_table")
} | {("jaxglmm.model", "Model.fit_fn")}
ALLOWED_TARGETS = ("jaxglmm", "jaxglmm.inference")


def test_no_function_local_imports_of_jaxglmm():
    """No jaxglmm import inside a function, except the conveniences named in
    LOCAL_IMPORTS_ALLOWED, and each of those imports jaxglmm.inference only."""
    found = [f"{m}:{line} ({fn}) imports {t}" for m, (_, local) in _graph().items()
             for t, line, fn in local
             if (m, fn) not in LOCAL_IMPORTS_ALLOWED or t not in ALLOWED_TARGETS]
    assert not found, "function-local imports (put the code in the right layer):\n" + \
        "\n".join(found)
    from jaxglmm.results.result import FitResult, INFERENCE_METHODS
    allowed = {fn for m, fn in LOCAL_IMPORTS_ALLOWED if m == "jaxglmm.results.result"}
    assert allowed == {f"FitResult.{n}" for n in INFERENCE_METHODS}
    assert all(callable(getattr(FitResult, n)) for n in INFERENCE_METHODS)


def test_the_local_import_check_sees_one(tmp_path):
    """The check finds an import inside a method and names the method (guards against a
    checker that walks nothing)."""
    path = tmp_path / "mod.py"
    path.write_text("class A:\n    def f(self):\n        from jaxglmm import inference\n")
    _, local = _imports("jaxglmm.results.mod", path, {"jaxglmm.inference"})
    assert local == [("jaxglmm.inference", 3, "A.f")]


def test_the_cycle_check_sees_a_cycle(tmp_path):
    """The graph code resolves relative imports: a two-module cycle written in its form is
    found (guards against a checker that finds nothing because it resolves nothing)."""
    a = ast.parse("from .b import x").body[0]
    assert _resolve("jaxglmm.fit.a", PACKAGE / "fit" / "a.py", a)[0] == "jaxglmm.fit.b"
    up = ast.parse("from ..core import problem").body[0]
    assert "jaxglmm.core.problem" in _resolve("jaxglmm.fit.a", PACKAGE / "fit" / "a.py", up)
    init = ast.parse("from .base import Family").body[0]
    assert _resolve("jaxglmm.families", PACKAGE / "families" / "__init__.py", init)[0] == \
        "jaxglmm.families.base"


def test_no_module_is_over_600_lines():
    long = {m: n for m, p in _modules().items()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"


def test_the_onehot_segment_strategy_gives_the_same_fit(monkeypatch):
    """JAXGLMM_SEGMENT_SUM=onehot (the GPU scatter-add workaround) routes gathers and
    segment sums through one-hot products: same sums, same fit; a bad name is refused."""
    import jax.numpy as jnp
    import numpy as np
    import jaxglmm as jg
    from jaxglmm.core import ops
    from jaxglmm.fit import cache
    idx = jnp.asarray([2, 0, -1, 2, 1])
    data = jnp.arange(10.0).reshape(5, 2)
    vals = jnp.arange(6.0).reshape(3, 2)
    plain = (ops.segment_sum(data, idx, 3), ops.gather_levels(vals, idx))
    monkeypatch.setenv("JAXGLMM_SEGMENT_SUM", "onehot")
    onehot = (ops.segment_sum(data, idx, 3), ops.gather_levels(vals, idx))
    for a, b in zip(plain, onehot):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b))
    cache.clear_caches()
    fit = jg.fit("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                 jg.load_dataset("cbpp"), "binomial")
    assert abs(fit.loglik - (-92.02628)) < 1e-3
    monkeypatch.setenv("JAXGLMM_SEGMENT_SUM", "bogus")
    with pytest.raises(ValueError, match="JAXGLMM_SEGMENT_SUM"):
        ops.segment_sum(data, idx, 3)
    monkeypatch.delenv("JAXGLMM_SEGMENT_SUM")
    cache.clear_caches()


def test_model_is_a_thin_front():
    """``Model`` is lme4's stages run in order (design, then problem, then a fitter), not the
    place where data are handled: its class body stays at 200 lines at most."""
    tree = ast.parse((PACKAGE / "model.py").read_text())
    model, = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Model"]
    size = model.end_lineno - model.lineno + 1
    assert size <= 200, f"Model is {size} lines; move data handling into design/"



def test_a_result_holds_its_problem_and_spec_not_the_model():
    """A FitResult keeps a typed reference to what it needs (the problem and the model's
    specification); the model it came from is rebuilt from them without a design pass."""
    import dataclasses

    from jaxglmm.core.problem import Problem
    from jaxglmm.results import FitResult
    from jaxglmm.results.spec import ModelSpec

    hints = {f.name: f.type for f in dataclasses.fields(FitResult)}
    assert "model" not in hints
    assert hints["problem"] in (Problem, "Problem") and hints["spec"] in (ModelSpec, "ModelSpec")


# Fitting methods are values (jaxglmm/methods.py), as families are: outside that table no code
# tests a method's name.  A name test is a comparison (==, !=, in, not in) of something named
# *method (a name, an attribute, a ["method"] key, or one of those .lower()-ed) with a fitting
# method's name as a string, a tuple/list/set holding one, or a list of them by name (one
# assigned in the same module, or the table's METHOD_NAMES and the old BAYES lists).  Other
# options called method are not fitting methods and pass: confint's interval methods
# ("wald", "profile", "bootstrap": its own table, confint.METHODS) and NUTS's chain_method.
NAME_LISTS = {"METHOD_NAMES", "BAYES", "BAYES_METHODS", "LIKELIHOOD_METHODS"}


def _method_name_tests(source: str, names: set[str]) -> list[int]:
    tree = ast.parse(source)
    local = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign)
             for t in n.targets if isinstance(t, ast.Name)}

    def refers_to_method(node) -> bool:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("lower", "strip", "casefold"):
            node = node.func.value
        if isinstance(node, ast.Name):
            return node.id.endswith("method")
        if isinstance(node, ast.Attribute):
            return node.attr.endswith("method")
        return isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
            and str(node.slice.value).endswith("method")

    def names_a_method(node) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(names_a_method(e) for e in node.elts)
        if isinstance(node, ast.Name):
            return node.id in NAME_LISTS or (node.id in local and names_a_method(local[node.id]))
        return False

    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Compare)
            for side in [[node.left, *node.comparators]]
            if any(refers_to_method(s) for s in side) and any(names_a_method(s) for s in side)]


def test_no_method_name_is_tested_outside_the_method_table():
    from jaxglmm.methods import METHOD_NAMES
    names = set(METHOD_NAMES)
    sample = ("A = ('ml', 'reml')\nB = ('wald', 'profile')\n"
              "x = fit.method == 'nuts'\ny = method.lower() in A\nz = m['method'] != 'vi'\n"
              "w = method in B\nv = chain_method == 'parallel'\nu = init == 'ml'\n")
    assert _method_name_tests(sample, names) == [3, 4, 5]       # the check sees them
    found = [f"{p.relative_to(ROOT)}:{line}" for p in sorted(PACKAGE.rglob("*.py"))
             if p != PACKAGE / "methods.py"
             for line in _method_name_tests(p.read_text(), names)]
    assert not found, ("a fitting method's name is tested outside jaxglmm/methods.py (ask "
                       "the method record's attributes instead):\n" + "\n".join(found))


def test_jax_jit_only_in_the_program_cache():
    """Every compiled program is made by ``fit.cache.jit`` inside a ``fit.cache.program``
    build, so it is cached by key and freed with the others: no ``jax.jit`` (call, decorator
    or ``from jax import jit``) anywhere else in the package."""
    found = []
    for m, p in _modules().items():
        if m == "jaxglmm.fit.cache":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "jit"
                    and isinstance(node.value, ast.Name) and node.value.id == "jax"):
                found.append(f"{m}:{node.lineno} jax.jit")
            elif (isinstance(node, ast.ImportFrom) and node.module == "jax"
                  and any(a.name == "jit" for a in node.names)):
                found.append(f"{m}:{node.lineno} from jax import jit")
    assert not found, "jax.jit outside fit/cache.py (use cache.jit in a program build):\n" + \
        "\n".join(found)


def test_no_private_jax_api():
    found = [f"{m}:{n}" for m, p in _modules().items()
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if "jax._src" in line or "_cache_size" in line]
    assert not found, f"private JAX APIs used: {found}"


def test_import_loads_no_heavy_dependency():
    # import jaxglmm costs about what import jax costs (issue 24: 1.13x, from 1.45x):
    # pandas, scipy, numpyro, optax, arviz and formulae load when first used
    code = ("import sys, jaxglmm; print(sorted(m for m in ('pandas', 'scipy', 'numpyro', "
            "'optax', 'arviz', 'formulae', 'matplotlib', 'dask', 'yaml', 'pydantic') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
