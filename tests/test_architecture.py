"""The house rules of docs/architecture.md, checked from the source: the stages import one way
(import-linter's layers contract in pyproject.toml), the module import graph has no cycles, no
module imports jaxglmm code inside a function (the way cycles used to be dodged), and no
module grows past about 800 lines."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxglmm"
MAX_LINES = 800


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
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(fn):
                for target in targets(sub):
                    local.append((target, sub.lineno))
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


def test_no_function_local_imports_of_jaxglmm():
    found = [f"{m}:{line} imports {t}" for m, (_, local) in _graph().items()
             for t, line in local]
    assert not found, "function-local imports (put the code in the right layer):\n" + \
        "\n".join(found)


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


def test_no_module_is_over_800_lines():
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
