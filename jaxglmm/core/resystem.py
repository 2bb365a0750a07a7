"""Random-effects structure and the blocked Cholesky of ``Lambda' Z' W Z Lambda + I``.

Terms that share a grouping factor are merged into one *factor* with a block-diagonal relative
covariance factor ``Lambda_f`` (so ``(x || g)`` costs one q=2 block per level, not two
factors).  Factors are sorted by decreasing number of levels, as lme4 does.

The first factor (most levels) is kept block-diagonal: one ``q1 x q1`` block per level, factored
with unrolled batched Cholesky.  Every other factor, together with any extra dense columns
(for the linear mixed model: ``[X, y]``), forms a dense trailing block of size ``m``; its Schur
complement is factored with a dense Cholesky.  This is MixedModels.jl's blocked scheme.  For a
single grouping factor the dense block holds only the extra columns; nested and crossed designs
put the factors with fewer levels there.  

Everything here is a pure function of arrays; the static structure (:class:`ReStructure`) is
hashable so it can be closed over by jitted functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from . import linalg
from .ops import segment_sum


# ----------------------------------------------------------------------------- structure
@dataclass(frozen=True)
class TermSpec:
    """One random-effect term inside a factor (columns ``col0 : col0 + q`` of the factor)."""

    label: str
    group: str
    names: tuple[str, ...]
    correlated: bool
    col0: int
    theta_start: int
    theta_rows: tuple[int, ...]
    theta_cols: tuple[int, ...]

    @property
    def q(self) -> int:
        return len(self.names)

    @property
    def n_theta(self) -> int:
        return len(self.theta_rows)


@dataclass(frozen=True)
class FactorSpec:
    group: str
    n_levels: int
    q: int
    terms: tuple[TermSpec, ...]
    # linear predictor (channel) each of the q columns feeds; all 0 for one-predictor models
    channels: tuple[int, ...] = ()


@dataclass(frozen=True)
class ReStructure:
    """Static (hashable) description of the random effects."""

    factors: tuple[FactorSpec, ...]
    n_theta: int
    n_channels: int = 1
    # channel of each fixed-effect coefficient (empty: all in channel 0)
    fixef_channels: tuple[int, ...] = ()

    @property
    def dense_factors(self) -> tuple[FactorSpec, ...]:
        return self.factors[1:]

    @property
    def p2(self) -> int:
        """Length of the dense part of u (all factors but the first)."""
        return sum(f.n_levels * f.q for f in self.dense_factors)

    @property
    def n_u(self) -> int:
        f0 = self.factors[0]
        return f0.n_levels * f0.q + self.p2

    @property
    def terms(self) -> tuple[TermSpec, ...]:
        return tuple(t for f in self.factors for t in f.terms)

    def theta_diagonal(self) -> np.ndarray:
        """Boolean mask of theta entries on a diagonal of Lambda (bounded below by 0 in lme4)."""
        mask = np.zeros(self.n_theta, bool)
        for t in self.terms:
            for k, (r, c) in enumerate(zip(t.theta_rows, t.theta_cols)):
                mask[t.theta_start + k] = r == c
        return mask

    def theta_init(self) -> np.ndarray:
        """lme4's start: Lambda = I."""
        return self.theta_diagonal().astype(float)


def build_structure(terms: Sequence) -> tuple[ReStructure, tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Group design terms into factors.

    Parameters
    ----------
    terms: sequence of :class:`jaxglmm.design.RandomTerm`.

    Returns
    -------
    structure, per-factor group index arrays (n,), per-factor Z arrays (n, q_f).
    """
    if not terms:
        raise ValueError("no random-effects terms specified in formula "
                         "(a mixed model needs at least one '(... | group)' term)")
    merged: list[list] = []
    for t in terms:
        for bucket in merged:
            first = bucket[0]
            if first.group == t.group and np.array_equal(first.group_index, t.group_index):
                bucket.append(t)
                break
        else:
            merged.append([t])
    order = sorted(range(len(merged)), key=lambda k: -merged[k][0].n_levels)
    factors, index, Z = [], [], []
    theta_pos = 0
    for k in order:
        bucket = merged[k]
        col0 = 0
        specs, channels = [], []
        for t in bucket:
            ch = getattr(t, "channel", 0)
            channels.extend(list(ch) if isinstance(ch, tuple) else [int(ch)] * t.q)
            rows, cols = [], []
            for c in range(t.q):
                for r in range(t.q):
                    if r == c or (t.correlated and r > c):
                        rows.append(col0 + r)
                        cols.append(col0 + c)
            specs.append(TermSpec(t.label, t.group, tuple(t.names), bool(t.correlated), col0,
                                  theta_pos, tuple(rows), tuple(cols)))
            theta_pos += len(rows)
            col0 += t.q
        factors.append(FactorSpec(bucket[0].group, bucket[0].n_levels, col0, tuple(specs),
                                  tuple(channels)))
        index.append(np.asarray(bucket[0].group_index, np.int32))
        Z.append(np.concatenate([np.asarray(t.Z, float) for t in bucket], axis=1))
    n_channels = 1 + max(c for f in factors for c in f.channels)
    return ReStructure(tuple(factors), theta_pos, n_channels), tuple(index), tuple(Z)


def lambdas(structure: ReStructure, theta: jnp.ndarray) -> list[jnp.ndarray]:
    """Relative covariance factors ``Lambda_f`` (q_f x q_f, lower triangular) from theta."""
    # built by stacking entries, not by a scatter: elementwise, so it vectorizes under vmap
    out = []
    zero = jnp.zeros((), dtype=theta.dtype)
    for f in structure.factors:
        entry = {}
        for t in f.terms:
            for k, (r, c) in enumerate(zip(t.theta_rows, t.theta_cols)):
                entry[r, c] = theta[t.theta_start + k]
        rows = [jnp.stack([entry.get((r, c), zero) for c in range(f.q)]) for r in range(f.q)]
        out.append(jnp.stack(rows))
    return out


def unit_lambdas(structure: ReStructure, dtype=jnp.float64) -> list[jnp.ndarray]:
    return [jnp.eye(f.q, dtype=dtype) for f in structure.factors]


# ----------------------------------------------------------------------------- u <-> blocks
def split_u(structure: ReStructure, u: jnp.ndarray) -> list[jnp.ndarray]:
    """Flat spherical random effects -> per-factor arrays (levels, q)."""
    out, pos = [], 0
    for f in structure.factors:
        size = f.n_levels * f.q
        out.append(u[..., pos:pos + size].reshape(u.shape[:-1] + (f.n_levels, f.q)))
        pos += size
    return out


def random_effects(structure: ReStructure, lams, u: jnp.ndarray) -> list[jnp.ndarray]:
    """b_f = Lambda_f u_f per level: list of (levels, q_f)."""
    return [uf @ lam.T for uf, lam in zip(split_u(structure, u), lams)]


# ----------------------------------------------------------------------------- cross-products
class CrossProducts(NamedTuple):
    """Unscaled weighted cross-products of ``[Z_1 | Z_2 ... E]``.

    d11: (G1, q1, q1)   Z1' W Z1 per level
    d21: (m, G1, q1)    [Z2 E]' W Z1
    d22: (m, m)         [Z2 E]' W [Z2 E]
    """

    d11: jnp.ndarray
    d21: jnp.ndarray
    d22: jnp.ndarray


def dense_rows(structure: ReStructure, index, Z, extra):
    """Sparse rows of the dense block: values (n, k) and column positions (n, k)."""
    vals, pos, off = [], [], 0
    for f, idx, z in zip(structure.dense_factors, index[1:], Z[1:]):
        vals.append(z)
        pos.append(off + idx[:, None] * f.q + jnp.arange(f.q)[None, :])
        off += f.n_levels * f.q
    if extra is not None:
        n, k = extra.shape
        vals.append(extra)
        pos.append(jnp.broadcast_to(off + jnp.arange(k)[None, :], (n, k)))
    if not vals:
        return None, None
    return jnp.concatenate(vals, axis=1), jnp.concatenate(pos, axis=1)


def dense_size(structure: ReStructure, n_extra: int) -> int:
    return structure.p2 + n_extra


def cross_products(structure: ReStructure, index, Z, w, extra=None) -> CrossProducts:
    """Weighted cross-products by segment sums over observations (never a dense Z)."""
    f0 = structure.factors[0]
    g1, z1 = index[0], Z[0]
    wz1 = w[:, None] * z1
    d11 = segment_sum(wz1[:, :, None] * z1[:, None, :], g1, f0.n_levels)
    m = dense_size(structure, 0 if extra is None else extra.shape[1])
    vals, pos = dense_rows(structure, index, Z, extra)
    if vals is None:
        return CrossProducts(d11, jnp.zeros((0, f0.n_levels, f0.q)), jnp.zeros((0, 0)))
    k = vals.shape[1]
    # d21[pos, g1, :] += w * v * z1
    flat = (pos * f0.n_levels + g1[:, None]).reshape(-1)
    contrib = (vals[:, :, None] * wz1[:, None, :]).reshape(-1, f0.q)
    d21 = segment_sum(contrib, flat, m * f0.n_levels).reshape(m, f0.n_levels, f0.q)
    flat22 = (pos[:, :, None] * m + pos[:, None, :]).reshape(-1)
    contrib22 = (w[:, None, None] * vals[:, :, None] * vals[:, None, :]).reshape(-1)
    d22 = segment_sum(contrib22, flat22, m * m).reshape(m, m)
    del k
    return CrossProducts(d11, d21, d22)


def _scale_dense_axis0(structure: ReStructure, lams, M):
    """Apply D' from the left along axis 0, where D = blockdiag(I_levels (x) Lambda_f, I_extra)."""
    parts, off = [], 0
    for f, lam in zip(structure.dense_factors, lams[1:]):
        size = f.n_levels * f.q
        blk = M[off:off + size].reshape((f.n_levels, f.q) + M.shape[1:])
        blk = jnp.einsum("gq...,qr->gr...", blk, lam)
        parts.append(blk.reshape((size,) + M.shape[1:]))
        off += size
    parts.append(M[off:])
    return jnp.concatenate(parts, axis=0)


def scaled_system(structure: ReStructure, lams, cp: CrossProducts):
    """``Lambda' (Z'WZ) Lambda + I`` in blocked form (the identity only on the Z part)."""
    lam1 = lams[0]
    q1 = lam1.shape[0]
    a11 = jnp.einsum("qr,gqs,st->grt", lam1, cp.d11, lam1) + jnp.eye(q1)
    m = cp.d22.shape[0]
    if m == 0:
        return a11, cp.d21, cp.d22
    a21 = jnp.einsum("mgq,qr->mgr", _scale_dense_axis0(structure, lams, cp.d21), lam1)
    a22 = _scale_dense_axis0(structure, lams, cp.d22)
    a22 = _scale_dense_axis0(structure, lams, a22.T).T
    p2 = structure.p2
    a22 = a22 + jnp.diag(jnp.concatenate([jnp.ones(p2), jnp.zeros(m - p2)]))
    return a11, a21, a22


# ----------------------------------------------------------------------------- factorization
class BlockedCholesky(NamedTuple):
    """L = [[L11, 0], [C', L22]] with L11 block-diagonal over the first factor's levels.

    L11: (G1, q1, q1); C: (G1, q1, m) = L11^{-1} A12 per level; L22: (m, m).
    """

    L11: jnp.ndarray
    C: jnp.ndarray
    L22: jnp.ndarray


def factor(a11, a21, a22) -> BlockedCholesky:
    L11 = linalg.chol(a11)
    m = a22.shape[0]
    if m == 0:
        return BlockedCholesky(L11, jnp.zeros(a11.shape[:2] + (0,)), a22)
    C = linalg.solve_lower(L11, jnp.transpose(a21, (1, 2, 0)))
    S = a22 - jnp.einsum("gqm,gqk->mk", C, C)
    return BlockedCholesky(L11, C, linalg.chol(S))


def logdet_z(chol: BlockedCholesky, p2: int) -> jnp.ndarray:
    """log|Lambda'Z'WZ Lambda + I| (the Z part only, extra columns excluded)."""
    out = linalg.logdet_chol(chol.L11)
    if p2:
        out = out + 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol.L22)[:p2]))
    return out


def solve(chol: BlockedCholesky, r1, r2):
    """Solve (L L') x = r with r split as (G1, q1) and (m,) parts."""
    z1 = linalg.solve_lower(chol.L11, r1[..., None])[..., 0]
    if chol.L22.shape[0] == 0:
        return linalg.solve_upper_t(chol.L11, z1[..., None])[..., 0], r2
    z2 = _tri(chol.L22, r2 - jnp.einsum("gqm,gq->m", chol.C, z1), trans=False)
    x2 = _tri(chol.L22, z2, trans=True)
    x1 = linalg.solve_upper_t(chol.L11, (z1 - jnp.einsum("gqm,m->gq", chol.C, x2))[..., None])[..., 0]
    return x1, x2


def _tri(L, b, trans):
    solve = linalg.solve_upper_t if trans else linalg.solve_lower
    return solve(L, b[..., None])[..., 0]


def conditional_covariances(chol: BlockedCholesky, structure: ReStructure) -> list[jnp.ndarray]:
    """Diagonal blocks of (Lambda'Z'WZ Lambda + I)^{-1} per factor level: list of (G_f, q_f, q_f)."""
    p2 = structure.p2
    G1, q1 = chol.L11.shape[:2]
    eye = jnp.broadcast_to(jnp.eye(q1), (G1, q1, q1))
    L11inv = linalg.solve_lower(chol.L11, eye)                   # (G1, q1, q1)
    if p2 == 0:
        return [jnp.einsum("gkq,gkr->gqr", L11inv, L11inv)]
    L2 = chol.L22[:p2, :p2]
    Minv = solve_triangular(L2, jnp.eye(p2), lower=True)          # L2^{-1}
    sigma22 = Minv.T @ Minv
    T = jnp.einsum("gqm,km->gqk", chol.C[:, :, :p2], Minv)        # C_g L2^{-T}
    inner = eye + jnp.einsum("gqk,grk->gqr", T, T)
    v11 = jnp.einsum("gkq,gkl,glr->gqr", L11inv, inner, L11inv)
    out, off = [v11], 0
    for f in structure.dense_factors:
        size = f.n_levels * f.q
        blk = sigma22[off:off + size, off:off + size].reshape(f.n_levels, f.q, f.n_levels, f.q)
        out.append(jnp.einsum("gqgr->gqr", blk))
        off += size
    return out


def term_covariances(structure: ReStructure, theta: np.ndarray, scale: float = 1.0) -> dict:
    """Covariance matrix of each term's random effects, keyed by ``(label, names)`` (the
    label alone repeats across the per-category copies of a categorical model's terms).

    ``Lambda`` is relative to the residual SD for gaussian models (``scale = sigma``) and
    absolute (``scale = 1``) otherwise.
    """
    theta = np.asarray(theta, float)
    out = {}
    for t in structure.terms:
        L = np.zeros((t.q, t.q))
        for k, (r, c) in enumerate(zip(t.theta_rows, t.theta_cols)):
            L[r - t.col0, c - t.col0] = theta[t.theta_start + k]
        out[(t.label, tuple(t.names))] = (scale ** 2) * (L @ L.T)
    return out


def canonical_theta(structure: ReStructure, theta: np.ndarray) -> np.ndarray:
    """theta with every Cholesky column's diagonal made non-negative, as lme4 reports it
    (``Lambda`` and ``Lambda D`` with D = diag(+-1) give the same covariance)."""
    theta = np.array(theta, float)
    for t in structure.terms:
        rows, cols = np.array(t.theta_rows), np.array(t.theta_cols)
        vals = theta[t.theta_start:t.theta_start + t.n_theta]
        for c in np.unique(cols):
            diag = vals[(rows == c) & (cols == c)]
            if diag.size and diag[0] < 0:
                vals[cols == c] *= -1
        theta[t.theta_start:t.theta_start + t.n_theta] = vals
    return theta
