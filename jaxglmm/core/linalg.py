"""Small dense linear algebra for batches of tiny blocks.

On CPU a ``vmap`` of ``jnp.linalg.cholesky`` over many 2x2 blocks loops in LAPACK; for the
per-group blocks of a random-effect term (q <= 4 or so) unrolled elementwise code is much
faster and vectorizes over the batch.  Larger blocks fall back to ``jnp.linalg``.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

UNROLL_MAX = 4


def chol(A: jnp.ndarray) -> jnp.ndarray:
    """Lower Cholesky factor of a batch of SPD matrices ``A`` (..., q, q)."""
    q = A.shape[-1]
    if q > UNROLL_MAX:
        return jnp.linalg.cholesky(A)
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
        return solve_triangular(L, B, lower=True)
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
        return solve_triangular(L, B, lower=True, trans="T")
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
