"""The host (numpy) side of the sparse crossed system: its cross-products and pattern, built
once per dataset (the pairs (first-factor level, other level) that meet in the data and the
triplets of the Schur update) for the jittable factor of :mod:`jaxglmm.core.sparse`; the
moments start of its theta; and LAPACK's inverse of its trailing block.

``structure`` below is the core's :class:`~jaxglmm.core.restructure.ReStructure` (read for its
factors and sizes only; design sits below core and does not import it).
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from .._lazy import scipy_lapack as lapack


class SparseSystem(NamedTuple):
    """Weighted cross-products of ``[Z1 | Z2 ... | E]`` with ``Z2' W Z1`` kept sparse, as pairs
    (a first-factor level and a level of another factor that meet in the data) and triplets
    (two pairs sharing a first-factor level: one block of the Schur update ``L21 L21'``).

    Sizes: G1 first-factor levels with q1 columns each; E the e extra dense columns ([X y]
    for an LMM); m = p2 + e the dense trailing block; qm the largest q of the dense factors;
    P pairs, T triplets, TE the E rows' triplets.  The ``triplet_level``/``triplet_product``
    and ``extra_*`` fields are for scalar blocks only (q1 = qm = 1, the pairs of a triplet
    then not kept) and empty otherwise.
    """

    d11: jnp.ndarray                # (G1, q1, q1) Z1' W Z1 per first-factor level
    dE: jnp.ndarray                 # (G1, q1, e) Z1' W E per level
    d22: jnp.ndarray                # (m, m) [Z2 E]' W [Z2 E], dense
    pair_level: jnp.ndarray         # (P,) each pair's first-factor level (ascending)
    pair_rows: jnp.ndarray          # (P, qm) the dense rows of its other level (padding: m)
    pair_values: jnp.ndarray        # (P, qm, q1) its block of Z2' W Z1 (zero padding)
    pair_factor: jnp.ndarray        # (P,) which dense factor its other level belongs to
    triplet_pair1: jnp.ndarray      # (T,) a triplet's later pair (in dense row order)
    triplet_pair2: jnp.ndarray      # (T,) its earlier (or the same) pair, same level
    triplet_position: jnp.ndarray   # (T, qm, qm) flat row * m + col of its block in the m x m
                                    # Schur complement (lower triangle; m * m: padding), ascending
    triplet_level: jnp.ndarray      # (T,) scalar blocks: the triplet's first-factor level
    triplet_product: jnp.ndarray    # (T,) or (0,) scalar blocks: its pairs' product (empty: all 1)
    extra_level: jnp.ndarray        # (TE,) scalar blocks: an E-row triplet's first-factor level
    extra_product: jnp.ndarray      # (TE,) its product of cross-products
    extra_position: jnp.ndarray     # (TE,) its flat position (row - p2) * m + col, ascending


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
    cache-sized, where a counting sort over the whole m x m range is random access into it
    (docs/benchmarks.md, design/sparse.py)."""
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


def sparse_system(structure, index, Z, w, extra, general: bool = False,
                  row_pairs: bool = False):
    """The sparse cross-products and the triplet pattern of one dataset (host numpy).

    ``general``: keep each triplet's two pairs (``triplet_pair1``, ``triplet_pair2``) even for
    scalar blocks, so the pairs' values can change while the pattern stays (the Laplace
    Hessian's weights change at each Newton step).  ``row_pairs``: also return, per dense
    factor, each row's pair index (n,), for recomputing ``pair_values`` from new weights
    (:func:`jaxglmm.core.sparse.sparse_values`).

    Locals: ``pg, prow, pv, pf`` build the pair fields, ``ta, tb, tdest, tg, tp`` the
    triplet fields and ``eg, ep, edest`` the E rows' (see :class:`SparseSystem`)."""
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
        # then not stored).  Placed in position order row by row (_scalar_triplets): no
        # comparison sort of the 1e8 triplets of a MovieLens-sized design, and no (a, b)
        # index arrays kept
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
        d11=jnp.asarray(d11), dE=jnp.asarray(dE), d22=jnp.asarray(d22),
        pair_level=jnp.asarray(pg, np.int32), pair_rows=jnp.asarray(prow, itype),
        pair_values=jnp.asarray(pv), pair_factor=jnp.asarray(pf, np.int32),
        triplet_pair1=jnp.asarray(ta, np.int32), triplet_pair2=jnp.asarray(tb, np.int32),
        triplet_position=jnp.asarray(tdest, itype),
        triplet_level=jnp.asarray(tg, _level_type(G1)), triplet_product=jnp.asarray(tp, float),
        extra_level=jnp.asarray(extra_t[0], np.int32), extra_product=jnp.asarray(extra_t[1], float),
        extra_position=jnp.asarray(extra_t[2], itype))
    return (out, row_pair) if row_pairs else out




class SparseLmmData(NamedTuple):
    """The sparse crossed LMM's data (:func:`sparse_lmm_data`): the system of ``[Z | X y]``
    (:class:`SparseSystem`), the number of rows with positive weight and their log-weights'
    sum."""

    sp: SparseSystem
    n: jnp.ndarray
    sum_log_w: jnp.ndarray


def sparse_lmm_data(structure, a) -> SparseLmmData:
    """The sparse system of one LMM dataset (``a``: the problem's arrays), built on the host:
    its pattern depends on the data."""
    w = np.asarray(a.weights, float)
    positive = w > 0
    extra = np.concatenate([np.asarray(a.X, float),
                            (np.asarray(a.y, float) - np.asarray(a.offset, float))[:, None]], 1)
    keep = positive if not positive.all() else slice(None)
    sp = sparse_system(structure, [np.asarray(i)[keep] for i in a.index],
                       [np.asarray(z)[keep] for z in a.Z], w[keep], extra[keep])
    return SparseLmmData(sp, jnp.asarray(float(positive.sum())),
                         jnp.asarray(float(np.sum(np.log(w[positive])))))


def sparse_pattern(structure, a):
    """The Laplace Hessian's sparse pattern for :class:`jaxglmm.core.glmm_sparse.SparseLaplace`
    (once per design: it depends on the levels that meet in the data, not on y or the
    weights): the pairs and triplets of :func:`sparse_system` and each row's pair."""
    n = np.shape(a.y)[0]
    return sparse_system(structure, [np.asarray(i) for i in a.index],
                         [np.asarray(z) for z in a.Z], np.ones(n), np.zeros((n, 0)),
                         general=True, row_pairs=True)


def sparse_theta_start(structure, d: SparseLmmData, floor: float = 0.05):
    """A start for theta near the optimum, scalar blocks only (host numpy, from the sparse
    cross-products): each factor's one-way method-of-moments variance of the OLS residuals'
    level sums, ``sigma_j^2 = (sum_g r_g^2 / n_g - (G_j - 1) s^2) / (n - sum_g n_g^2 / n)``,
    over the residual variance left.  Crossed factors bias it a little, but it starts far
    nearer the optimum than lme4's theta = 1 (docs/benchmarks.md).  Entries below ``floor``
    start at ``floor`` (at 0 the gradient vanishes by symmetry)."""
    sp = d.sp
    p2 = structure.p2
    d22 = np.asarray(sp.d22)
    e = d22.shape[0] - p2
    p = e - 1
    EE = d22[p2:, p2:]
    beta = np.linalg.lstsq(EE[:p, :p], EE[:p, p], rcond=None)[0]
    nw = float(np.asarray(sp.d11)[:, 0, 0].sum())
    s2 = max((EE[p, p] - beta @ EE[:p, p]) / max(float(d.n) - p, 1.0), 1e-300)
    blocks = [(np.asarray(sp.d11)[:, 0, 0], np.asarray(sp.dE)[:, 0, :])]
    off = 0
    for f in structure.dense_factors:
        rows = slice(off, off + f.n_levels)
        blocks.append((np.diagonal(d22)[rows], d22[rows, p2:]))
        off += f.n_levels
    sig = []
    for ng, ze in blocks:
        keep = ng > 0
        ng, r = ng[keep], (ze[keep, p] - ze[keep, :p] @ beta)
        c = nw - np.sum(ng ** 2) / nw
        q = np.sum(r ** 2 / ng)
        sig.append(max((q - (ng.size - 1) * s2) / c, 0.0) if c > 0 else 0.0)
    resid = max(s2 - sum(sig), 0.05 * s2)
    theta = np.zeros(structure.n_theta)
    for f, v in zip(structure.factors, sig):
        theta[f.terms[0].theta_start] = max(np.sqrt(v / resid), floor)
    return theta


def lapack_cholesky_inverse(S, k: int):
    """:func:`jaxglmm.core.lmm.dense_cholesky_inverse` by LAPACK on the host (numpy in and out): dpotrf, then
    dpotri on the leading block, 2 k^3 / 3 flops where the device version's triangular
    solve and product take 3 k^3 (timings: docs/benchmarks.md)."""
    S = np.asarray(S)
    # S (C order) read as Fortran is S' = S: its upper factor U (Fortran) is L' (C order),
    # and the upper triangle dpotri fills (Fortran) is the lower one in C order
    U, info = lapack.dpotrf(S.T, lower=0, overwrite_a=0, clean=1)
    out = np.zeros(S.shape, order="F")
    if info != 0:
        return np.full(S.shape, np.nan), out.T
    out[:k, :k] = U[:k, :k]
    inv, info = lapack.dpotri(out[:k, :k], lower=0, overwrite_c=1)
    out[:k, :k] = inv
    return U.T, out.T
