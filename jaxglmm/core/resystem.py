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

import jax
import jax.numpy as jnp
import numpy as np

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
    param_group: str = ""     # the group in parameter names (sd_<param_group>__<name>)

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
                                  theta_pos, tuple(rows), tuple(cols),
                                  getattr(t, "param_group", "") or t.label))
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
    g1 = index[0]
    d11, wz1 = _first_block(structure, index, Z, w)
    m = dense_size(structure, 0 if extra is None else extra.shape[1])
    vals, pos = dense_rows(structure, index, Z, extra)
    if vals is None:
        return CrossProducts(d11, jnp.zeros((0, f0.n_levels, f0.q)), jnp.zeros((0, 0)))
    # d21[pos, g1, :] += w * v * z1
    flat = (pos * f0.n_levels + g1[:, None]).reshape(-1)
    contrib = (vals[:, :, None] * wz1[:, None, :]).reshape(-1, f0.q)
    d21 = segment_sum(contrib, flat, m * f0.n_levels).reshape(m, f0.n_levels, f0.q)
    return CrossProducts(d11, d21, _dense_block(vals, pos, w, m))


def _first_block(structure: ReStructure, index, Z, w):
    """``Z1' W Z1`` per first-factor level (G1, q1, q1), and ``W Z1`` (n, q1)."""
    wz1 = w[:, None] * Z[0]
    return segment_sum(wz1[:, :, None] * Z[0][:, None, :], index[0],
                       structure.factors[0].n_levels), wz1


def _dense_block(vals, pos, w, m: int):
    """The dense block's weighted cross-products (m, m) from :func:`dense_rows`."""
    flat = (pos[:, :, None] * m + pos[:, None, :]).reshape(-1)
    contrib = (w[:, None, None] * vals[:, :, None] * vals[:, None, :]).reshape(-1)
    return segment_sum(contrib, flat, m * m).reshape(m, m)


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
    Minv = linalg.dense_tri_inv(L2)        # L2^{-1}
    sigma22 = Minv.T @ Minv
    T = jnp.einsum("gqm,km->gqk", chol.C[:, :, :p2], Minv)        # C_g L2^{-T}
    inner = eye + jnp.einsum("gqk,grk->gqr", T, T)
    v11 = jnp.einsum("gkq,gkl,glr->gqr", L11inv, inner, L11inv)
    return [v11] + _level_blocks(structure, sigma22)


def _level_blocks(structure: ReStructure, sigma22) -> list[jnp.ndarray]:
    """The per-level diagonal blocks (G_f, q_f, q_f) of the dense factors' covariance."""
    out, off = [], 0
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


# ----------------------------------------------------------------------------- sparse crossed
# MixedModels.jl's blocked Cholesky with L21 kept sparse.  The first factor (most levels) is
# block-diagonal as above; the rows of the other factors' levels meet the first factor's
# levels only where the two co-occur in the data, so ``A21 = [Z2]' W Z1`` is stored as a list
# of (first-factor level, other level) *pairs* with their q_f x q1 blocks, and the Schur
# update ``L21 L21'`` is a sum over *triplets* (two pairs sharing a first-factor level): it
# costs about sum_g nnz_g^2, not levels2 * levels1 * levels2.  Only the trailing block (the
# other factors with [X y]) is dense.  The pattern depends on the data, so it is built on the
# host, once per dataset (:func:`sparse_system`); an evaluation then costs nothing in n.
class SparseSystem(NamedTuple):
    """Weighted cross-products of ``[Z1 | Z2 ... | E]`` with ``Z2' W Z1`` kept sparse.

    d11: (G1, q1, q1)      Z1' W Z1 per first-factor level
    dE:  (G1, q1, e)       Z1' W E per level (E: the extra dense columns, [X y] for an LMM)
    d22: (m, m)            [Z2 E]' W [Z2 E], dense (m = p2 + e)
    pg, prow: (P,), (P, qm) first-factor level of each pair and the dense rows of its other
        level (qm: the largest q of the dense factors; padding rows point at m, dropped)
    pv:  (P, qm, q1)       the pair's block of Z2' W Z1 (zero padding)
    pf:  (P,)              which dense factor the pair belongs to
    ta, tb: (T,)           the triplets: pairs ta >= tb (in dense row order) sharing a level
    tdest: (T, qm, qm)     flat position (row * m + col, lower triangle) of each triplet's
        block in the m x m Schur complement (m * m for padding), ascending
    tg, tp: (T,), (T,) or (0,)  scalar blocks only (q1 = qm = 1; ta and tb are then empty):
        each triplet's first-factor level and the product of its two pairs' cross-products
        (empty when all are 1)
    eg, ep, edest: (TE,)   scalar blocks only: the same for the E rows' part of the update,
        L21 L21' restricted to the rows p2: (position (row - p2) * m + col), ascending
    """

    d11: jnp.ndarray
    dE: jnp.ndarray
    d22: jnp.ndarray
    pg: jnp.ndarray
    prow: jnp.ndarray
    pv: jnp.ndarray
    pf: jnp.ndarray
    ta: jnp.ndarray
    tb: jnp.ndarray
    tdest: jnp.ndarray
    tg: jnp.ndarray
    tp: jnp.ndarray
    eg: jnp.ndarray
    ep: jnp.ndarray
    edest: jnp.ndarray


def _ranges(counts: np.ndarray):
    """For groups of sizes ``counts``: each member's group and position within it."""
    total = int(counts.sum())
    group = np.repeat(np.arange(counts.size), counts)
    start = np.cumsum(counts) - counts
    return group, np.arange(total) - np.repeat(start, counts), start


def _argsort_int(key: np.ndarray) -> np.ndarray:
    """A stable argsort of non-negative integers by 16-bit digits (numpy's radix sort): much
    faster than a comparison sort for the 1e8 triplets of a large crossed design."""
    key = np.asarray(key)
    top = int(key.max()) if key.size else 0
    order = np.argsort((key & 0xFFFF).astype(np.uint16), kind="stable")
    shift = 16
    while top >> shift:
        digit = ((key[order] >> shift) & 0xFFFF).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
        shift += 16
    return order


def _level_type(n_levels: int):
    """The narrowest index type for the first factor's levels in the triplets (int16 halves
    MovieLens' 8.4e7-entry array)."""
    return np.int16 if n_levels <= np.iinfo(np.int16).max else np.int32


def _scalar_triplets(pg, rows, vals, counts, m: int, itype):
    """Positions (ascending), first-factor levels and products of the scalar triplets.

    Built row by row of the dense block: each pair (g, r) meets the pairs of its level at
    rows <= r (a prefix of the level's sorted rows), and a row's triplets are put in column
    order by a stable radix sort over that one row's range.  Every pass is sequential or
    cache-sized: MovieLens' 8.4e7 triplets in 2.5 s here, where a counting sort over the
    whole m x m range (random access into 110 MB) took 6.5 s."""
    ends = np.cumsum(counts)
    starts = ends - counts
    lengths = np.arange(pg.size) - starts[pg] + 1          # the prefix of each pair's level
    by_row = np.argsort(rows, kind="stable")               # levels ascending within a row
    row_end = np.cumsum(np.bincount(rows, minlength=m))
    total = int(lengths.sum())
    tg = np.empty(total, _level_type(counts.size))
    tdest = np.empty(total, itype)
    unit = bool(np.all(vals == 1.0))
    tp = np.zeros(0) if unit else np.empty(total)
    small = m <= np.iinfo(np.uint16).max
    out = 0
    for r in np.flatnonzero(np.diff(row_end, prepend=0)):
        t = by_row[row_end[r - 1] if r else 0:row_end[r]]
        L = lengths[t]
        n = int(L.sum())
        offs = np.repeat(starts[pg[t]] - (np.cumsum(L) - L), L) + np.arange(n)
        col = rows[offs]
        order = np.argsort(col.astype(np.uint16) if small else col, kind="stable")
        tdest[out:out + n] = r * m + col[order]
        tg[out:out + n] = np.repeat(pg[t], L)[order]
        if not unit:
            tp[out:out + n] = (np.repeat(vals[t], L) * vals[offs])[order]
        out += n
    return tdest[:, None, None], tg, tp


def sparse_system(structure: ReStructure, index, Z, w, extra, general: bool = False,
                  row_pairs: bool = False):
    """The sparse cross-products and the triplet pattern of one dataset (host numpy).

    ``general``: keep each triplet's two pairs (``ta``, ``tb``) even for scalar blocks, so
    the pairs' values can change while the pattern stays (the Laplace Hessian's weights
    change at each Newton step).  ``row_pairs``: also return, per dense factor, each row's
    pair index (n,), for recomputing ``pv`` from new weights (:func:`sparse_values`)."""
    f0 = structure.factors[0]
    G1, q1 = f0.n_levels, f0.q
    g1 = np.asarray(index[0], np.int64)
    z1 = np.asarray(Z[0], float)
    w = np.asarray(w, float)
    E = np.asarray(extra, float)
    e = E.shape[1]
    wz1 = w[:, None] * z1
    d11 = np.stack([np.stack([np.bincount(g1, wz1[:, a] * z1[:, b], G1) for b in range(q1)], -1)
                    for a in range(q1)], 1)
    dE = (np.stack([np.stack([np.bincount(g1, wz1[:, a] * E[:, c], G1) for c in range(e)], -1)
                    for a in range(q1)], 1) if e else np.zeros((G1, q1, 0)))
    dense = structure.dense_factors
    m = structure.p2 + e
    qm = max([f.q for f in dense], default=1)
    # dense rows of every observation (as dense_rows, on the host) -> d22
    vals, pos, off = [], [], 0
    for f, idx, z in zip(dense, index[1:], Z[1:]):
        vals.append(np.asarray(z, float))
        pos.append(off + np.asarray(idx, np.int64)[:, None] * f.q + np.arange(f.q)[None, :])
        off += f.n_levels * f.q
    vals.append(E)
    pos.append(np.broadcast_to(off + np.arange(e)[None, :], E.shape))
    vals, pos = np.concatenate(vals, 1), np.concatenate(pos, 1)
    flat = (pos[:, :, None] * m + pos[:, None, :]).ravel()
    d22 = np.bincount(flat, (w[:, None, None] * vals[:, :, None] * vals[:, None, :]).ravel(),
                      m * m).reshape(m, m)
    # pairs (first-factor level, other level), factor by factor, sorted by first-factor level
    pg, prow, pv, pf, off = [], [], [], [], 0
    local, off_pairs = [], 0            # each row's pair, per dense factor (before the sort)
    for j, (f, idx, z) in enumerate(zip(dense, index[1:], Z[1:])):
        key = g1 * f.n_levels + np.asarray(idx, np.int64)
        uniq, inv = np.unique(key, return_inverse=True)
        local.append(off_pairs + inv.reshape(-1))
        off_pairs += uniq.size
        v = np.zeros((uniq.size, qm, q1))
        z = np.asarray(z, float)
        for a in range(f.q):
            for b in range(q1):
                v[:, a, b] = np.bincount(inv, z[:, a] * wz1[:, b], uniq.size)
        rows = np.full((uniq.size, qm), m, np.int64)
        lev = uniq % f.n_levels
        rows[:, :f.q] = off + lev[:, None] * f.q + np.arange(f.q)[None, :]
        pg.append(uniq // f.n_levels)
        prow.append(rows)
        pv.append(v)
        pf.append(np.full(uniq.size, j))
        off += f.n_levels * f.q
    if not dense:       # one grouping factor: no pairs
        pg, prow, pv, pf = [np.zeros(0, int)], [np.zeros((0, 1), int)], [np.zeros((0, 1, q1))], \
            [np.zeros(0, int)]
    pg, prow, pv, pf = (np.concatenate(x) for x in (pg, prow, pv, pf))
    # regroup all pairs by first-factor level, dense rows ascending within a level
    order = np.lexsort((prow[:, 0], pg))
    pg, prow, pv, pf = pg[order], prow[order], pv[order], pf[order]
    if row_pairs:
        where = np.empty_like(order)
        where[order] = np.arange(order.size)
        row_pair = tuple(jnp.asarray(where[lp], np.int32) for lp in local)
    counts = np.bincount(pg, minlength=G1)
    # triplets: within each level, every pair a with every earlier pair b (and itself)
    itype = np.int32 if m * m < 2 ** 31 - 1 else np.int64
    tg = tp = np.zeros(0)
    scalar = q1 == 1 and qm == 1 and not general
    if scalar:
        # scalar blocks: a triplet's product is P_t * lam1^2 / A11_g, scaled by the two dense
        # factors' lambdas after the sum (P_t = 1 for unit weights and no repeated pairs:
        # then not stored).  Placed in position order by a counting sort, level by level
        # (a level's triplets have distinct positions): no comparison sort of the 8e7
        # triplets of a MovieLens-sized design, and no (a, b) index arrays kept
        tdest, tg, tp = _scalar_triplets(pg, prow[:, 0], pv[:, 0, 0], counts, m, itype)
        ta = tb = np.zeros(0, np.int32)
    else:
        _, within, start = _ranges(counts)
        reps = within + 1
        ta = np.repeat(np.arange(pg.size, dtype=np.int32), reps)
        tb = np.arange(ta.size, dtype=np.int64)
        tb -= np.repeat(np.cumsum(reps) - reps, reps)
        tb += np.repeat(start[pg], reps)
        tb = tb.astype(np.int32)
        ra, rb = prow[ta], prow[tb]
        tdest = ra[:, :, None] * m + rb[:, None, :]
        tdest = np.where((ra[:, :, None] < m) & (rb[:, None, :] < m), tdest, m * m).astype(itype)
        srt = _argsort_int(tdest[:, 0, 0])
        ta, tb, tdest = ta[srt], tb[srt], tdest[srt]
        del srt
    if scalar:
        # the E rows' triplets the same way: (E row, pair) and (E row, E row) per level
        p2 = structure.p2
        er, ec = np.tril_indices(e)
        eg = np.concatenate([np.repeat(pg, e), np.repeat(np.arange(G1), er.size)])
        ep = np.concatenate([(pv[:, 0, :1] * dE[pg, 0, :]).ravel(),
                             (dE[:, 0, er] * dE[:, 0, ec]).ravel()])
        edest = np.concatenate([(np.arange(e)[None, :] * m + prow[:, :1]).ravel(),
                                np.tile(er * m + p2 + ec, G1)])
        srt = _argsort_int(edest)
        extra_t = (eg[srt], ep[srt], edest[srt])
    else:
        extra_t = (np.zeros(0), np.zeros(0), np.zeros(0))
    out = SparseSystem(
        jnp.asarray(d11), jnp.asarray(dE), jnp.asarray(d22), jnp.asarray(pg, np.int32),
        jnp.asarray(prow, itype), jnp.asarray(pv), jnp.asarray(pf, np.int32),
        jnp.asarray(ta, np.int32), jnp.asarray(tb, np.int32), jnp.asarray(tdest, itype),
        jnp.asarray(tg, _level_type(G1)), jnp.asarray(tp, float), jnp.asarray(extra_t[0], np.int32),
        jnp.asarray(extra_t[1], float), jnp.asarray(extra_t[2], itype))
    return (out, row_pair) if row_pairs else out


def sparse_values(structure: ReStructure, sp: SparseSystem, row_pair, index, Z,
                  w) -> SparseSystem:
    """``sp`` with its values recomputed from the weights ``w`` (its pattern kept; no extra
    columns): one pass over the rows, ``Z1'WZ1`` per level, ``Z2'WZ1`` per pair (``row_pair``
    from :func:`sparse_system`) and the dense ``Z2'WZ2``."""
    q1 = structure.factors[0].q
    P, qm = sp.pv.shape[:2]
    d11, wz1 = _first_block(structure, index, Z, w)
    pv = jnp.zeros((P, qm, q1), w.dtype)
    for f, rp, z in zip(structure.dense_factors, row_pair, Z[1:]):
        blk = segment_sum(z[:, :, None] * wz1[:, None, :], rp, P)        # (P, q_f, q1)
        pv = pv + jnp.pad(blk, ((0, 0), (0, qm - f.q), (0, 0)))
    vals, pos = dense_rows(structure, index, Z, None)
    return sp._replace(d11=d11, d22=_dense_block(vals, pos, w, structure.p2), pv=pv)


def sparse_solve(ch: SparseCholesky, sp: SparseSystem, r1, r2):
    """:func:`solve` for the sparse factor (no extra columns): ``(L L') x = r``, r as
    (G1, q1) and (p2,)."""
    z1 = linalg.solve_lower(ch.L11, r1[..., None])[..., 0]
    m = ch.L22.shape[0]
    per = jnp.einsum("kqa,kq->ka", ch.Ct, z1[sp.pg])                    # (P, qm)
    l21z = segment_sum(per.reshape(-1), sp.prow.reshape(-1), m + 1)[:m]
    z2 = _tri(ch.L22, r2 - l21z, trans=False)
    x2 = _tri(ch.L22, z2, trans=True)
    x1 = linalg.solve_upper_t(ch.L11, (z1 - sparse_l21_times(ch, sp, x2))[..., None])[..., 0]
    return x1, x2


# the dense Schur update's flops (an LMM evaluation, a Laplace Newton step) from which the
# crossed LMM and the Laplace Hessian keep L21 sparse (InstEval: 2972 * 1145^2 = 3.9e9;
# penicillin: 24 * 8^2)
SPARSE_MIN_WORK = 1e8


def sparse_schur_pays(structure: ReStructure, n_extra: int) -> bool:
    """Whether the sparse blocks pay: two or more grouping factors and a dense Schur update
    of the trailing block, G1 * q1 * m^2 flops, past ``SPARSE_MIN_WORK``."""
    if len(structure.factors) < 2:
        return False
    f0 = structure.factors[0]
    m = structure.p2 + n_extra
    return f0.n_levels * f0.q * m * m >= SPARSE_MIN_WORK


class SparseCholesky(NamedTuple):
    """The blocked Cholesky factor with L21 sparse: L11 (G1, q1, q1); ``Ct`` (P, q1, qm) the
    pairs' blocks of L11^{-1} A12 (the Z2 part of L21', sparse); ``CE`` (G1, q1, e) the
    extra columns' part (dense over levels); L22 (m, m) dense."""

    L11: jnp.ndarray
    Ct: jnp.ndarray
    CE: jnp.ndarray
    L22: jnp.ndarray


def _padded_lambdas(structure: ReStructure, lams, qm: int):
    out = [jnp.pad(lam, ((0, qm - f.q), (0, qm - f.q)))
           for f, lam in zip(structure.dense_factors, lams[1:])]
    return jnp.stack(out) if out else jnp.zeros((1, qm, qm), lams[0].dtype)


def sparse_factor(structure: ReStructure, lams, sp: SparseSystem) -> SparseCholesky:
    """Factor ``Lambda' Z' W Z Lambda + I`` (augmented by E) from the sparse cross-products."""
    L11, Ct, CE, S = sparse_schur(structure, lams, sp)
    # S holds its lower triangle only; the Cholesky's derivative rule takes the whole
    # matrix, so it is made symmetric (one m^2 pass) for the derivatives to be right
    S = jnp.tril(S) + jnp.tril(S, -1).T
    return SparseCholesky(L11, Ct, CE, linalg.dense_chol(S))


def scalar_blocks(structure: ReStructure) -> bool:
    """Whether every grouping factor has one scalar term (``(1 | g)``-like: theta_j scales
    factor j's columns), the case of the closed-form gradient
    (:func:`jaxglmm.core.lmm.sparse_deviance_gradient`)."""
    return all(f.q == 1 and len(f.terms) == 1 for f in structure.factors)


def sparse_schur(structure: ReStructure, lams, sp: SparseSystem):
    """The pieces of :func:`sparse_factor` before the dense factorization: ``(L11, Ct, CE,
    S)`` with S the trailing block's Schur complement (its lower triangle)."""
    lam1 = lams[0]
    q1 = lam1.shape[0]
    m = sp.d22.shape[0]
    p2 = structure.p2
    qm = sp.pv.shape[1]
    L11 = linalg.chol(jnp.einsum("qr,gqs,st->grt", lam1, sp.d11, lam1) + jnp.eye(q1))
    CE = linalg.solve_lower(L11, jnp.einsum("qr,gqe->gre", lam1, sp.dE))
    lamp = _padded_lambdas(structure, lams, qm)[sp.pf]                   # (P, qm, qm)
    A = jnp.einsum("kab,kaq,qr->krb", lamp, sp.pv, lam1)                  # (P, q1, qm)
    Ct = linalg.solve_lower(L11[sp.pg], A)                               # (P, q1, qm)
    # S = A22 - L21 L21': the Z2 x Z2 part over the triplets, the rest from CE
    e = m - p2
    scale = jnp.concatenate([jnp.full(f.n_levels * f.q, lam[0, 0])
                             for f, lam in zip(structure.dense_factors, lams[1:])]
                            + [jnp.ones(e)])
    if sp.eg.shape[0]:
        # scalar blocks (q1 = qm = 1): every product in L21 L21' is P_t lam1^2 / A11_g, times
        # the two rows' lambdas; one sorted sum for the Z2 rows, one for the E rows, then
        # S = D (d22 - T) D + I_p2 in one pass
        wg = jnp.square(lam1[0, 0]) / (jnp.square(lam1[0, 0]) * sp.d11[:, 0, 0] + 1.0)
        cz = wg[sp.tg] * sp.tp if sp.tp.shape[0] else wg[sp.tg]
        Tz = segment_sum_sorted(cz, sp.tdest.reshape(-1), p2 * m, sorted_=True)
        Te = segment_sum_sorted(wg[sp.eg] * sp.ep, sp.edest, e * m, sorted_=True)
        T = jnp.concatenate([Tz, Te]).reshape(m, m)
        S = scale[:, None] * (sp.d22 - T) * scale[None, :]
        S = S.at[jnp.arange(p2), jnp.arange(p2)].add(1.0)
    else:
        contrib = jnp.einsum("tqa,tqb->tab", Ct[sp.ta], Ct[sp.tb])
        T = segment_sum_sorted(contrib.reshape(-1), sp.tdest.reshape(-1), m * m + 1,
                               sorted_=qm == 1)[:m * m].reshape(m, m)
        a22 = _scale_dense_axis0(structure, lams, sp.d22)
        a22 = _scale_dense_axis0(structure, lams, a22.T).T
        a22 = a22 + jnp.diag(jnp.concatenate([jnp.ones(p2), jnp.zeros(m - p2)]))
        S = a22 - T
        if e:           # the extra columns' part (none for the Laplace Hessian)
            ez = jnp.einsum("kqe,kqa->kae", CE[sp.pg], Ct)                # (P, qm, e)
            EZ = segment_sum_sorted(ez.reshape(-1, e), sp.prow.reshape(-1), m + 1,
                                    sorted_=False)[:p2]                  # (p2, e)
            EE = jnp.einsum("gqe,gqf->ef", CE, CE)
            S = S.at[p2:, :p2].add(-EZ.T).at[p2:, p2:].add(-EE)
    return L11, Ct, CE, S


def segment_sum_sorted(data, ids, num_segments: int, sorted_: bool):
    """:func:`~jaxglmm.core.ops.segment_sum` (the one place of the strategy), its ids sorted
    where ``sorted_``."""
    return segment_sum(data, ids, num_segments, indices_are_sorted=sorted_)


def sparse_l21_times(ch: SparseCholesky, sp: SparseSystem, x2: jnp.ndarray) -> jnp.ndarray:
    """``L21' x`` restricted to the Z2 columns, per first-factor level: (G1, q1) from x2 (p2,)."""
    xp = jnp.concatenate([x2, jnp.zeros(1, x2.dtype)])
    rows = jnp.where(sp.prow >= x2.shape[0], x2.shape[0], sp.prow)
    per = jnp.einsum("kqa,ka->kq", ch.Ct, xp[rows])
    return segment_sum(per, sp.pg, ch.L11.shape[0])


def sparse_conditional_covariances(ch: SparseCholesky, sp: SparseSystem,
                                   structure: ReStructure, lams,
                                   sigma22: jnp.ndarray | None = None) -> list[jnp.ndarray]:
    """As :func:`conditional_covariances`, for the sparse factor: the first factor's blocks
    from the triplets (``C_g Sigma22 C_g'`` summed over the pairs of each level).
    ``sigma22``: the inverse of the factor's leading p2 x p2 block where the caller has it
    (its lower triangle is read)."""
    p2 = structure.p2
    G1, q1 = ch.L11.shape[:2]
    eye = jnp.broadcast_to(jnp.eye(q1), (G1, q1, q1))
    L11inv = linalg.solve_lower(ch.L11, eye)
    if sigma22 is None:
        Minv = linalg.dense_tri_inv(ch.L22[:p2, :p2])
        sigma22 = Minv.T @ Minv
    else:
        sigma22 = jnp.tril(sigma22[:p2, :p2])
        sigma22 = sigma22 + jnp.tril(sigma22, -1).T
    sig = jnp.pad(sigma22, ((0, 1), (0, 1)))
    if sp.eg.shape[0]:
        m = sp.d22.shape[0]
        dest = sp.tdest.reshape(-1)
        r, c = dest // m, dest % m
        scale = jnp.concatenate([jnp.full(f.n_levels, lam[0, 0])
                                 for f, lam in zip(structure.dense_factors, lams[1:])]
                                + [jnp.zeros(1)])
        wg = jnp.square(lams[0][0, 0]) / jnp.square(ch.L11[:, 0, 0])
        x = wg[sp.tg] * (sp.tp if sp.tp.shape[0] else 1.0) * scale[r] * scale[c] * sig[r, c]
        x = jnp.where(r == c, x, 2.0 * x)
        inner = eye + segment_sum(x, sp.tg, G1)[:, None, None]
    else:
        rows = jnp.where(sp.prow >= p2, p2, sp.prow)
        ra, rb = rows[sp.ta], rows[sp.tb]
        blk = sig[ra[:, :, None], rb[:, None, :]]                         # (T, qm, qm)
        X = jnp.einsum("tqa,tab,trb->tqr", ch.Ct[sp.ta], blk, ch.Ct[sp.tb])
        X = X + jnp.where((sp.ta != sp.tb)[:, None, None], jnp.swapaxes(X, 1, 2), 0.0)
        inner = eye + segment_sum(X, sp.pg[sp.ta], G1)
    v11 = jnp.einsum("gkq,gkl,glr->gqr", L11inv, inner, L11inv)
    return [v11] + _level_blocks(structure, sigma22)
