"""Small dense linear algebra for batches of tiny blocks.

On CPU a ``vmap`` of ``jnp.linalg.cholesky`` over many 2x2 blocks loops in LAPACK; for the
per-group blocks of a random-effect term (q <= 4 or so) unrolled elementwise code is much
faster and vectorizes over the batch.

A *batch* of larger blocks (the per-group blocks of a term with five or more columns) is
never handed to LAPACK either: jaxlib's batched LAPACK kernels (``lapack_dpotrf_ffi``,
``lapack_dtrsm_ffi``, ...) split their batch over XLA's intra-op thread pool and wait for the
pieces (``ParallelBatchMap``) while running *on* that pool, so two such calls that XLA runs
at the same time on a 2-thread pool wait for each other forever (issue 22: every REML fit
of a q = 5 block hung).  Batches take the column-by-column forms below instead: a
``fori_loop`` of q steps, each a few elementwise operations over the whole batch, so the
program holds one step whatever q is (the unrolled closed forms grow like q^3) and no host
kernel that waits on the pool.  A
single matrix (2-D input: the dense trailing block) still goes to LAPACK, unbatched.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

UNROLL_MAX = 4


def _chol_columns(A: jnp.ndarray) -> jnp.ndarray:
    """Left-looking Cholesky of a batch, one column per step of a ``fori_loop`` (lower
    triangle of A read): the program holds one step whatever q is."""
    idx = jnp.arange(A.shape[-1])

    def step(j, L):
        # v_i = A_ij - sum_k L_ik L_jk (columns >= j of L are still zero)
        v = jnp.take(A, j, axis=-1) - jnp.sum(L * jnp.take(L, j, axis=-2)[..., None, :], axis=-1)
        d = jnp.sqrt(jnp.take(v, j, axis=-1))[..., None]
        col = jnp.where(idx > j, v / d, jnp.where(idx == j, d, 0.0))
        # a select, not a scatter (.at[].set): elementwise, and so is its derivative
        return jnp.where(idx[None, :] == j, col[..., :, None], L)

    return jax.lax.fori_loop(0, A.shape[-1], step, jnp.zeros_like(A))


def _substitute(L: jnp.ndarray, B: jnp.ndarray, upper_t: bool) -> jnp.ndarray:
    """Forward substitution (``L X = B``) or back substitution through L' (``L' X = B``) for
    a batch, one row of X per step of a ``fori_loop``."""
    q = L.shape[-1]
    X = jnp.zeros(jnp.broadcast_shapes(L.shape[:-2], B.shape[:-2]) + B.shape[-2:],
                  jnp.result_type(L, B))
    rows = jnp.arange(q)[:, None]

    def step(k, X):
        i = q - 1 - k if upper_t else k
        # the rows of X not yet solved are zero: sum_m L_im X_m (L'_im = L_mi for upper_t)
        li = jnp.take(L, i, axis=-1) if upper_t else jnp.take(L, i, axis=-2)
        s = jnp.take(B, i, axis=-2) - jnp.sum(li[..., :, None] * X, axis=-2)
        lii = jnp.take(jnp.take(L, i, axis=-1), i, axis=-1)
        return jnp.where(rows == i, (s / lii[..., None])[..., None, :], X)

    return jax.lax.fori_loop(0, q, step, X)


def _solve_lower_rows(L: jnp.ndarray, B: jnp.ndarray) -> jnp.ndarray:
    return _substitute(L, B, upper_t=False)


def _solve_upper_t_rows(L: jnp.ndarray, B: jnp.ndarray) -> jnp.ndarray:
    return _substitute(L, B, upper_t=True)


def chol(A: jnp.ndarray) -> jnp.ndarray:
    """Lower Cholesky factor of SPD ``A`` (q, q), or of a batch of them (..., q, q)."""
    q = A.shape[-1]
    if q > UNROLL_MAX:
        if A.ndim == 2:
            return jax.lax.linalg.cholesky(A, symmetrize_input=False)
        return _chol_columns(A)
    L = [[None] * q for _ in range(q)]
    for j in range(q):
        s = A[..., j, j]
        for k in range(j):
            s = s - L[j][k] * L[j][k]
        d = jnp.sqrt(s)
        L[j][j] = d
        for i in range(j + 1, q):
            s = A[..., i, j]
            for k in range(j):
                s = s - L[i][k] * L[j][k]
            L[i][j] = s / d
    zero = jnp.zeros_like(A[..., 0, 0])
    rows = [jnp.stack([L[i][j] if j <= i else zero for j in range(q)], axis=-1) for i in range(q)]
    return jnp.stack(rows, axis=-2)


def solve_lower(L: jnp.ndarray, B: jnp.ndarray) -> jnp.ndarray:
    """Solve ``L X = B`` for a batch of lower-triangular ``L`` (..., q, q), ``B`` (..., q, k)."""
    q = L.shape[-1]
    if q > UNROLL_MAX:
        if L.ndim == 2 and B.ndim == 2:
            return solve_triangular(L, B, lower=True)
        return _solve_lower_rows(L, B)
    X = []
    for i in range(q):
        s = B[..., i, :]
        for k in range(i):
            s = s - L[..., i, k, None] * X[k]
        X.append(s / L[..., i, i, None])
    return jnp.stack(X, axis=-2)


def solve_upper_t(L: jnp.ndarray, B: jnp.ndarray) -> jnp.ndarray:
    """Solve ``L^T X = B`` for a batch of lower-triangular ``L`` (..., q, q), ``B`` (..., q, k)."""
    q = L.shape[-1]
    if q > UNROLL_MAX:
        if L.ndim == 2 and B.ndim == 2:
            return solve_triangular(L, B, lower=True, trans="T")
        return _solve_upper_t_rows(L, B)
    X = [None] * q
    for i in reversed(range(q)):
        s = B[..., i, :]
        for k in range(i + 1, q):
            s = s - L[..., k, i, None] * X[k]
        X[i] = s / L[..., i, i, None]
    return jnp.stack(X, axis=-2)


def logdet_chol(L: jnp.ndarray) -> jnp.ndarray:
    """log|A| from its Cholesky factor, summed over any batch dimensions."""
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)))
