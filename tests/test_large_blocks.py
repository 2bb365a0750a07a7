"""Large correlated random-effect blocks (issue 22: "models that never finish").

A single correlated block of five or more terms used to hang every REML fit: jaxglmm handed
the per-group blocks to jaxlib's *batched* LAPACK kernels, which split their batch over XLA's
CPU thread pool and wait for the pieces while running on that pool; two at once on a small
pool wait for each other forever.  Per-group blocks are now factored elementwise
(core.linalg) and the finite-difference Hessian maps instead of batching (fit.optimize).

References: lme4 fits by scripts/large_blocks_reference.R (tight bobyqa refits) of the data
of scripts/large_blocks_data.py, stored in tests/data/large_blocks_*.
"""
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg
from jaxglmm.core import linalg
from jaxglmm.fit import likelihood
from jaxglmm.methods import get_method
from jaxglmm.fit.cache import batched_lapack_calls

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
REF = json.loads((DATA / "large_blocks_reference.json").read_text())
# per-quantity tolerances against lme4 (LMMs are exact: the same REML/ML criterion)
LMM_TOL = {"loglik": 1e-6, "fixef": 1e-5, "theta": 2e-4}


def _data_script():
    spec = importlib.util.spec_from_file_location("large_blocks_data",
                                                  ROOT / "scripts" / "large_blocks_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def small():
    return pd.read_csv(DATA / "large_blocks_small.csv.gz")


def _fit(case: str, data: pd.DataFrame):
    ref = REF[case]
    family = "poisson" if ref["method"] == "laplace" else "gaussian"
    return jg.fit(ref["formula"], data, family=family, method=ref["method"])


def _compare(fit, ref, tol):
    assert fit.converged
    assert abs(fit.loglik - ref["loglik"]) < tol["loglik"], (fit.loglik, ref["loglik"])
    want = {k.replace("(Intercept)", "Intercept"): v for k, v in ref["fixef"].items()}
    assert list(fit.fixef.index) == list(want)
    np.testing.assert_allclose(fit.fixef.to_numpy(float), list(want.values()),
                               atol=tol["fixef"])
    np.testing.assert_allclose(np.asarray(fit.theta, float), ref["theta"], atol=tol["theta"])


# ----------------------------------------------------------------------------- linear algebra
@pytest.mark.parametrize("q", [5, 7])
def test_batched_factor_and_solves_match_numpy(q):
    rng = np.random.default_rng(q)
    M = rng.normal(size=(6, q, q))
    A = M @ np.swapaxes(M, 1, 2) + q * np.eye(q)
    B = rng.normal(size=(6, q, 2))
    L = jax.jit(linalg.chol)(jnp.asarray(A))
    np.testing.assert_allclose(L, np.linalg.cholesky(A), atol=1e-12)
    np.testing.assert_allclose(jax.jit(linalg.solve_lower)(L, B),
                               np.linalg.solve(np.asarray(L), B), atol=1e-12)
    Lt = np.swapaxes(np.asarray(L), 1, 2)
    np.testing.assert_allclose(jax.jit(linalg.solve_upper_t)(L, B), np.linalg.solve(Lt, B),
                               atol=1e-12)
    # d log|A| / dA = A^{-1} (the factor reads the lower triangle: off-diagonals count twice)
    g = jax.jit(jax.grad(lambda a: linalg.logdet_chol(linalg.chol(a))))(jnp.asarray(A))
    inv = np.linalg.inv(A)
    want = 2 * np.tril(inv, -1) + inv * np.eye(q)
    np.testing.assert_allclose(np.tril(g), want, atol=1e-10)


def test_batched_lapack_calls_detects_a_batched_kernel():
    a = jnp.broadcast_to(jnp.eye(4), (3, 4, 4))
    text = jax.jit(jnp.linalg.cholesky).lower(a).compile().as_text()
    assert batched_lapack_calls(text) == ["lapack_dpotrf_ffi[3,4,4]"]
    assert batched_lapack_calls(jax.jit(jnp.linalg.cholesky).lower(a[0]).compile().as_text()) == []


@pytest.mark.parametrize("case", ["small_q5_reml",
                                  pytest.param("small_pois5_laplace", marks=pytest.mark.slow)])
def test_fit_programs_hold_no_batched_lapack_kernel(small, case):
    """The class of deadlock: no batched LAPACK kernel in a single fit's compiled program
    (the per-group blocks, and the dense block under the finite-difference Hessian)."""
    ref = REF[case]
    family = "poisson" if ref["method"] == "laplace" else "gaussian"
    problem = jg.Model(ref["formula"], small, family=family).problem
    spec = get_method(ref["method"])
    lmm = likelihood.uses_lmm(problem, spec)
    fn = likelihood._program(problem, lmm, spec.reml, 1)
    theta0, phi0 = problem.starts
    start = theta0 if lmm else phi0
    text = fn.lower(problem.arrays, start).compile().as_text()
    assert "lapack_" in text or ref["method"] == "laplace"     # the dense block's, unbatched
    assert batched_lapack_calls(text) == []


# ----------------------------------------------------------------------------- against lme4
@pytest.mark.parametrize("case", ["small_q5_reml", "small_q6_reml", "small_q5_ml",
                                  "small_cross_reml"])
def test_small_blocks_match_lme4(small, case):
    _compare(_fit(case, small), REF[case], LMM_TOL)


@pytest.mark.slow
def test_q8_block_matches_lme4(small):
    _compare(_fit("small_q8_reml", small), REF["small_q8_reml"], LMM_TOL)


@pytest.mark.slow
def test_poisson_q5_block_matches_glmer(small):
    """Laplace: glmer's bobyqa stops a little short (ours is the higher maximum, and glmer
    warns at its default fit); logLik within 5e-3, estimates within 2e-2."""
    fit = _fit("small_pois5_laplace", small)
    ref = REF["small_pois5_laplace"]
    assert fit.loglik >= ref["loglik"] - 1e-6
    _compare(fit, ref, {"loglik": 5e-3, "fixef": 2e-2, "theta": 2e-2})


@pytest.mark.slow
@pytest.mark.parametrize("case", ["big_q5_reml", "big_q5_ml", "big_q6_reml", "big_q8_reml",
                                  "big_q10_reml"])
def test_3000_groups_match_lme4(case):
    if case not in REF:
        pytest.skip(f"no lme4 reference for {case} (scripts/large_blocks_reference.R big)")
    ref = REF[case]
    q = int(ref["data"].split("_q")[1].split(".")[0])
    data = _data_script().big_table(q)
    y = ref["formula"].split(" ~")[0]
    assert len(data) == ref["checksum"]["n"]
    assert abs(data[y].sum() - ref["checksum"]["sum_y"]) < 1e-6
    assert abs(data["x1"].sum() - ref["checksum"]["sum_x1"]) < 1e-6
    _compare(_fit(case, data), ref, LMM_TOL)


# ----------------------------------------------------------------------------- the deadlock
DEADLOCK_SCRIPT = textwrap.dedent("""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("d", sys.argv[1])
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    import jaxglmm as jg
    data = mod.big_table(5).iloc[:8 * 300]          # 300 groups of 8 rows
    s = " + ".join(f"x{j}" for j in range(1, 5))
    fit = jg.fit(f"y5 ~ {s} + ({s} | g)", data, method="reml")
    print("LOGLIK", fit.loglik, fit.converged)
""")


def test_q5_reml_fit_finishes_in_a_subprocess():
    """Hung every time before the fix (300 groups, one q = 5 block, REML); now about 5-15 s.
    A subprocess with a timeout, so that a hang fails the test instead of the suite."""
    try:
        out = subprocess.run([sys.executable, "-c", DEADLOCK_SCRIPT,
                              str(ROOT / "scripts" / "large_blocks_data.py")],
                             capture_output=True, text=True, timeout=240, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail("the q = 5 REML fit did not finish in 240 s (issue 22's deadlock)")
    assert out.returncode == 0, out.stderr[-2000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("LOGLIK")][-1]
    _, loglik, converged = line.split()
    assert np.isfinite(float(loglik)) and converged == "True"
