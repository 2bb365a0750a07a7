"""No batched LAPACK kernel in any program the batch engine compiles (issue 22's class).

jaxlib's batched LAPACK kernels on CPU (``lapack_dpotrf_ffi``, ``lapack_dtrsm_ffi``,
``lapack_dsyevd_ffi``, ``lapack_dgetrf_ffi`` with a batch > 1) split their batch over XLA's
intra-op thread pool and wait for the pieces while running on it: two at once on a small pool
wait for each other forever.  A ``vmap`` over datasets (fit_many, refit_many, bootstrap,
power) used to turn every single-matrix factorization (the dense trailing block of crossed
and nested designs, the Hessian's inverse, the zero-inflation damping's eigenvalues) into
one.  Every single-matrix call now goes through ``core.linalg``'s ``dense_*`` functions,
whose vmap is a ``lax.map`` of unbatched calls; these tests compile the batch engine's
programs and look for batched kernels, and run a crossed fit_many in a subprocess with a
timeout, so that a hang fails the test instead of the suite.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.linalg import solve_triangular

from jaxglmm.core import linalg
from jaxglmm.fit.cache import batched_lapack_calls

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- core.linalg
def _spd(rng, n):
    M = rng.normal(size=(n, n))
    return jnp.asarray(M @ M.T + n * np.eye(n))


def _new(A, B):
    L = linalg.dense_chol(A)
    Y = linalg.dense_solve_upper_t(L, linalg.dense_solve_lower(L, B))
    return (jnp.sum(jnp.sin(Y)) + jnp.sum(jnp.log(jnp.diag(L)))
            + jnp.sum(linalg.dense_tri_inv(L) ** 2) + jnp.sum(linalg.eigvalsh(A) ** 2)
            + jnp.sum(jnp.cos(linalg.dense_solve(A + L, B))) + jnp.sum(linalg.dense_inv(A) ** 3))


def _old(A, B):
    L = jax.lax.linalg.cholesky(A, symmetrize_input=False)
    Y = solve_triangular(L, solve_triangular(L, B, lower=True), lower=True, trans="T")
    return (jnp.sum(jnp.sin(Y)) + jnp.sum(jnp.log(jnp.diag(L)))
            + jnp.sum(solve_triangular(L, jnp.eye(A.shape[0]), lower=True) ** 2)
            + jnp.sum(jnp.linalg.eigvalsh(A) ** 2)
            + jnp.sum(jnp.cos(jnp.linalg.solve(A + L, B))) + jnp.sum(jnp.linalg.inv(A) ** 3))


def _maxdiff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                               jax.tree.leaves(b)))


def test_dense_functions_match_jax_with_derivatives():
    rng = np.random.default_rng(0)
    A, B = _spd(rng, 5), jnp.asarray(rng.normal(size=(5, 2)))
    both = lambda t, *args: (jax.jit(t(_new))(*args), jax.jit(t(_old))(*args))
    assert _maxdiff(*both(lambda f: f, A, B)) < 1e-12
    assert _maxdiff(*both(lambda f: jax.grad(f, (0, 1)), A, B)) < 1e-11
    As = jnp.stack([A, _spd(rng, 5), _spd(rng, 5)])
    Bs = jnp.stack([B, 2 * B, -B])
    assert _maxdiff(*both(lambda f: jax.vmap(jax.grad(f)), As, Bs)) < 1e-11


@pytest.mark.slow
def test_dense_functions_second_derivatives_match_jax():
    rng = np.random.default_rng(0)
    A, B = _spd(rng, 5), jnp.asarray(rng.normal(size=(5, 2)))
    assert _maxdiff(jax.jit(jax.hessian(_new))(A, B), jax.jit(jax.hessian(_old))(A, B)) < 1e-10


@pytest.mark.parametrize("q", [1, 2, 3])
def test_eigvalsh_of_a_batch_of_blocks(q):
    rng = np.random.default_rng(q)
    C = jnp.stack([_spd(rng, q) - 2.0 * q * jnp.eye(q) for _ in range(5)])
    np.testing.assert_allclose(linalg.eigvalsh(C), jnp.linalg.eigvalsh(C), atol=1e-12)
    g = jax.grad(lambda c: jnp.sum(linalg.eigvalsh(c)[:, 0]))(C)
    want = jax.grad(lambda c: jnp.sum(jnp.linalg.eigvalsh(c)[:, 0]))(C)
    np.testing.assert_allclose(g, want, atol=1e-10)
    text = jax.jit(jax.grad(lambda c: jnp.sum(linalg.eigvalsh(c)))).lower(C).compile().as_text()
    assert batched_lapack_calls(text) == []


def test_vmapped_dense_functions_hold_no_batched_kernel():
    rng = np.random.default_rng(1)
    As = jnp.stack([_spd(rng, 6) for _ in range(3)])
    Bs = jnp.asarray(rng.normal(size=(3, 6, 2)))
    for f, args in ((jax.vmap(_new), (As, Bs)), (jax.vmap(jax.grad(_new, (0, 1))), (As, Bs)),
                    (jax.vmap(jax.hessian(_new)), (As, Bs))):
        assert batched_lapack_calls(jax.jit(f).lower(*args).compile().as_text()) == []
    # the check itself sees the kernels the old calls make
    assert batched_lapack_calls(jax.jit(jax.vmap(_old)).lower(As, Bs).compile().as_text())


# ----------------------------------------------------------------------------- batch engine
SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, pandas as pd
    import jaxglmm as jg
    from jaxglmm.fit import cache
    from jaxglmm.fit.cache import batched_lapack_calls

    case = sys.argv[1]
    rng = np.random.default_rng(22)
    frames = []
    for sim in range(3):
        if case == "crossed":
            a, b = np.repeat(np.arange(12), 10), np.tile(np.arange(10), 12)
            x = rng.normal(size=a.size)
            y = (1 + 0.5 * x + 0.8 * rng.normal(size=12)[a] + 0.6 * rng.normal(size=10)[b]
                 + rng.normal(size=a.size))
            cols = {"a": a.astype(str), "b": b.astype(str)}
        elif case == "nested":
            a, b = np.repeat(np.arange(8), 20), np.repeat(np.arange(40), 4)
            x = rng.normal(size=a.size)
            eta = -0.3 + 0.6 * x + 0.7 * rng.normal(size=8)[a] + 0.5 * rng.normal(size=40)[b]
            y = rng.poisson(np.exp(eta))
            cols = {"a": a.astype(str), "b": b.astype(str)}
        else:
            g = np.repeat(np.arange(30), 8)
            x = rng.normal(size=g.size)
            mu = np.exp(0.4 + 0.5 * x + 0.6 * rng.normal(size=30)[g])
            y = np.where(rng.random(g.size) < 0.25, 0, rng.poisson(mu))
            cols = {"g": g.astype(str)}
        frames.append(pd.DataFrame({"sim": sim, "y": y, "x": x, **cols}))
    df = pd.concat(frames, ignore_index=True)
    formula, family = {"crossed": ("y ~ x + (1 | a) + (1 | b)", "gaussian"),
                       "nested": ("y ~ x + (1 | a/b)", "poisson"),
                       "zi": ("y ~ x + (1 | g)", "zero_inflated_poisson")}[case]
    fm = jg.fit_many(formula, df, family=family, by="sim", progress=False)
    singles = [jg.fit(formula, d, family=family).loglik for _, d in df.groupby("sim")]
    texts = []
    for key, made in cache._PROGRAMS.items():
        if isinstance(key, tuple) and str(key[0]).startswith("batch"):
            for prog in (made[0] if isinstance(made[0], tuple) else made):
                texts += [f.result().as_text() for f in prog.compiled.values()]
    print("RESULT", json.dumps({
        "programs": len(texts),
        "batched": sorted({c for t in texts for c in batched_lapack_calls(t)}),
        "converged": bool(np.all(fm.converged)),
        "diff": float(np.max(np.abs(fm.loglik.to_numpy() - np.array(singles))))}))
""")


@pytest.mark.parametrize("case", ["crossed", pytest.param("nested", marks=pytest.mark.slow),
                                  pytest.param("zi", marks=pytest.mark.slow)])
def test_fit_many_programs_hold_no_batched_kernel_and_agree(case):
    """fit_many over 3 datasets (crossed LMM, nested Poisson GLMM, zero-inflated Poisson):
    finishes (a subprocess with a timeout), its compiled init/step/finish programs hold no
    batched LAPACK call, and each logLik agrees with the dataset fitted alone."""
    try:
        out = subprocess.run([sys.executable, "-c", SCRIPT, case], capture_output=True,
                             text=True, timeout=180, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"fit_many ({case}) did not finish in 180 s (issue 22's deadlock)")
    assert out.returncode == 0, out.stderr[-2000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")][-1]
    res = json.loads(line.split(" ", 1)[1])
    assert res["programs"] >= 3
    assert res["batched"] == []
    assert res["converged"]
    assert res["diff"] < 1e-6


def test_only_core_linalg_calls_jax_linear_algebra():
    """The class, closed at its source: no module but core/linalg.py calls jax's linear
    algebra (``jnp.linalg``, ``jax.scipy.linalg``, ``jax.lax.linalg``) directly, so no new
    call site can put a LAPACK kernel under a vmap."""
    import re
    pattern = re.compile(r"jnp\.linalg\.|jax\.scipy\.linalg|lax\.linalg|"
                         r"from jax\.scipy\.linalg import|from jax\.numpy import linalg")
    offenders = []
    for path in sorted((ROOT / "jaxglmm").rglob("*.py")):
        if path.relative_to(ROOT).as_posix() == "jaxglmm/core/linalg.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line.split("#")[0]):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == [], "\n".join(offenders)


def test_dense_pinv_under_vmap_matches_numpy():
    rng = np.random.default_rng(3)
    A = np.stack([_spd(rng, 4) for _ in range(3)])
    A[0, :, 0] = A[0, 0, :] = 0.0            # a singular member
    got = jax.jit(jax.vmap(linalg.dense_pinv))(jnp.asarray(A))
    np.testing.assert_allclose(got, np.linalg.pinv(A), rtol=1e-10, atol=1e-12)
    text = jax.jit(jax.vmap(linalg.dense_pinv)).lower(jnp.asarray(A)).compile().as_text()
    assert batched_lapack_calls(text) == []
