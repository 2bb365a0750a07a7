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
kernel that waits on the pool.

A single matrix (2-D input: the dense trailing block, a Hessian) goes to LAPACK through the
``dense_*`` functions below, and only through them: each is a ``custom_jvp`` of a
``jax.custom_batching.sequential_vmap``, so a ``vmap`` over it (the batch engine's vmap over
datasets, or over the groups of a 3-D input) becomes a ``lax.map`` of unbatched LAPACK calls,
never a batched kernel, and its derivatives are matrix products of factors those same
functions compute (no ``triangular_solve`` on tangents, which a vmap would batch).  The tests
(``tests/test_no_batched_lapack.py``) compile the batch engine's programs and check they
hold no batched LAPACK call (:func:`jaxglmm.fit.cache.batched_lapack_calls`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

UNROLL_MAX = 4


# -- single matrices: unbatched LAPACK, whatever vmaps them ------------------------------

def _sequential(f):
    """``f`` whose ``vmap`` is a ``lax.map`` of ``f`` (``jax.custom_batching.sequential_vmap``,
    which also takes the case where no argument is batched, as its derivatives' rules may)."""
    raw, f = f, jax.custom_batching.custom_vmap(f)

    @f.def_vmap
    def rule(axis_size, in_batched, *args):
        if not any(in_batched):
            out = raw(*args)
            return out, jax.tree.map(lambda _: False, out)
        mapped = [a for a, b in zip(args, in_batched) if b]

        def one(xs):
            it = iter(xs)
            return f(*[next(it) if b else a for a, b in zip(args, in_batched)])

        out = jax.lax.map(one, mapped)
        return out, jax.tree.map(lambda _: True, out)

    return f


@_sequential
def _lapack_chol(A):
    return jax.lax.linalg.cholesky(A, symmetrize_input=False)


@_sequential
def _lapack_solve_lower(L, B):
    return solve_triangular(L, B, lower=True)


@_sequential
def _lapack_solve_upper_t(L, B):
    return solve_triangular(L, B, lower=True, trans="T")


@_sequential
def _lapack_inv(A):
    return jnp.linalg.inv(A)


@_sequential
def _lapack_eigh(A):
    return jnp.linalg.eigh(A)


def dense_pinv(A: jnp.ndarray) -> jnp.ndarray:
    """Moore-Penrose inverse of one matrix (SVD, as ``jnp.linalg.pinv``), unbatched under
    ``vmap``.  Its callers take values only (a derivative through it is not defined here)."""
    return _lapack_pinv(A)


@_sequential
def _lapack_pinv(A):
    return jnp.linalg.pinv(A)


@jax.custom_jvp
def dense_tri_inv(L: jnp.ndarray) -> jnp.ndarray:
    """``L^-1`` for one lower-triangular ``L`` (lower triangle read)."""
    return _lapack_solve_lower(L, jnp.eye(L.shape[-1], dtype=L.dtype))


@dense_tri_inv.defjvp
def _dense_tri_inv_jvp(primals, tangents):
    Li = dense_tri_inv(primals[0])
    return Li, -Li @ jnp.tril(tangents[0]) @ Li


@jax.custom_jvp
def dense_chol(A: jnp.ndarray) -> jnp.ndarray:
    """Lower Cholesky factor of one SPD matrix (lower triangle read; NaN if not PD), by
    LAPACK, unbatched under ``vmap``.  Its derivative is jax's (the whole tangent, as
    ``lax.linalg.cholesky(symmetrize_input=False)`` takes it)."""
    return _lapack_chol(A)


@dense_chol.defjvp
def _dense_chol_jvp(primals, tangents):
    L = dense_chol(primals[0])
    Li = dense_tri_inv(L)
    M = Li @ tangents[0] @ Li.T
    phi = jnp.tril(M) / (1.0 + jnp.eye(M.shape[-1], dtype=M.dtype))
    return L, L @ phi


def _triangular(lapack, trans: bool, doc: str):
    """``X = op(L)^-1 B`` (op: identity or transpose) by ``lapack``, differentiated as
    ``dX = op(L)^-1 (dB - op(dL) X)`` with ``L^-1`` a product (no solve on tangents)."""
    op = (lambda M: M.T) if trans else (lambda M: M)

    @jax.custom_jvp
    def f(L, B):
        return lapack(L, B)

    @f.defjvp
    def _jvp(primals, tangents):
        L, B = primals
        X = f(L, B)
        return X, op(dense_tri_inv(L)) @ (tangents[1] - op(jnp.tril(tangents[0])) @ X)

    f.__doc__ = doc
    return f


dense_solve_lower = _triangular(
    _lapack_solve_lower, False,
    """``L^-1 B`` for one lower-triangular ``L`` (q, q), ``B`` (q, k).""")
dense_solve_upper_t = _triangular(
    _lapack_solve_upper_t, True,
    """``L^-T B`` for one lower-triangular ``L`` (q, q), ``B`` (q, k).""")


@jax.custom_jvp
def dense_inv(A: jnp.ndarray) -> jnp.ndarray:
    """``A^-1`` of one square matrix (LU), unbatched under ``vmap``."""
    return _lapack_inv(A)


@dense_inv.defjvp
def _dense_inv_jvp(primals, tangents):
    Ai = dense_inv(primals[0])
    return Ai, -Ai @ tangents[0] @ Ai


def dense_solve(A: jnp.ndarray, B: jnp.ndarray) -> jnp.ndarray:
    """``A^-1 B`` for one square ``A``, unbatched under ``vmap``; ``B`` (q,) or (q, k).
    ``A``'s inverse (LU) times ``B``: ``B`` enters as a product, so a solve against a
    tangent (the implicit-function rule of :mod:`jaxglmm.inference.implicit`) transposes
    in reverse mode, which a LAPACK solve wrapped for vmap does not."""
    return dense_inv(A) @ B


def eigvalsh(A: jnp.ndarray) -> jnp.ndarray:
    """Ascending eigenvalues of the symmetric part of ``A`` (q, q), or of a batch (..., q, q)
    (as ``jnp.linalg.eigvalsh``): q <= 2 in closed form, elementwise; larger ones by
    unbatched LAPACK calls (a ``lax.map`` over a batch)."""
    q = A.shape[-1]
    if q == 1:
        return A[..., 0, :]
    if q == 2:
        a, b, d = A[..., 0, 0], 0.5 * (A[..., 1, 0] + A[..., 0, 1]), A[..., 1, 1]
        m, r = 0.5 * (a + d), jnp.sqrt((0.5 * (a - d)) ** 2 + b * b)
        return jnp.stack([m - r, m + r], axis=-1)
    return _eigvalsh_lapack(A)


@jax.custom_jvp
def _eigh_batch(A):
    """``(w, V)`` of the symmetric part of A (..., q, q) by unbatched LAPACK calls, with
    the derivative of ``jnp.linalg.eigh`` (distinct eigenvalues)."""
    f = _lapack_eigh
    for _ in range(A.ndim - 2):
        f = jax.vmap(f)
    w, V = f(A)
    return w, V         # a tuple, as the JVP rule's primal output


@_eigh_batch.defjvp
def _eigh_batch_jvp(primals, tangents):
    w, V = _eigh_batch(primals[0])
    dA = 0.5 * (tangents[0] + jnp.swapaxes(tangents[0], -1, -2))
    M = jnp.swapaxes(V, -1, -2) @ dA @ V
    gap = w[..., None, :] - w[..., :, None]
    off = ~jnp.eye(w.shape[-1], dtype=bool)
    F = jnp.where(off, 1.0 / jnp.where(off, gap, 1.0), 0.0)
    return (w, V), (jnp.diagonal(M, axis1=-2, axis2=-1), V @ (F * M))


def _eigvalsh_lapack(A):
    return _eigh_batch(A)[0]


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
            return dense_chol(A)
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
            return dense_solve_lower(L, B)
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
            return dense_solve_upper_t(L, B)
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
