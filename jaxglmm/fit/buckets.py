"""Shape buckets: a single fit runs the program compiled for its sizes rounded up, so the next
model of the same form (another dataset, a subset, other column names) compiles nothing.

A fit program's shapes are the rows, the fixed effects and each grouping factor's levels;
its key is the random-effect structure and the family.  Here the rows and the levels are
rounded up to a few sizes, and the structure loses its names (no compiled code reads them).
The padding is the batch engine's (:mod:`jaxglmm.many.plan`): rows of weight zero (copies of
the first row, so every value stays valid for the family) and levels with no rows.  Neither
changes a fit: a zero-weight row adds exactly nothing to a likelihood or to the
cross-products, and an empty level's random effect is zero with a unit block in the
penalized system (log-determinant 0).  The fit is then cut back to the dataset's own levels.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from ..core import sparse as sps
from ..core.glmm_sparse import uses_sparse_blocks
from ..core.problem import LARGE_N, Problem, ProblemArrays, host_arrays
from ..core.restructure import ReStructure

# Up to these sizes, rows and the first factor's levels round up to a power of two (at most
# twice the work, on fits that take microseconds to milliseconds); past them, to a quarter
# octave (bucket_size).  The other factors' levels sit in the dense block, whose work grows
# with their cube: a quarter octave always.
POW2_ROWS = 4096
POW2_LEVELS = 256


def bucket_size(n: int) -> int:
    """A padded size: at most four sizes an octave, so padding wastes under a quarter."""
    if n <= 8:
        return n
    step = 1 << (int(n).bit_length() - 3)
    return -(-n // step) * step


def _pow2(n: int, limit: int) -> int:
    return 1 << max(0, n - 1).bit_length() if n <= limit else bucket_size(n)


def with_levels(structure: ReStructure, levels: Sequence[int]) -> ReStructure:
    """The structure with each factor's number of levels replaced."""
    factors = tuple(replace(f, n_levels=int(g)) for f, g in zip(structure.factors, levels))
    return replace(structure, factors=factors)


def anonymous(structure: ReStructure) -> ReStructure:
    """The structure without its names (groups, labels, coefficient names): what a compiled
    program depends on, so that models differing only in names share programs."""
    def term(t):
        return replace(t, label="", group="", names=("",) * t.q, param_group="")
    factors = tuple(replace(f, group="", terms=tuple(term(t) for t in f.terms))
                    for f in structure.factors)
    return replace(structure, factors=factors)


def pad_rows(a: ProblemArrays, n: int) -> ProblemArrays:
    """Host (NumPy) arrays padded to ``n`` rows with copies of the first row, of weight zero.
    A program takes them as they are: no transfer or compile of its own."""
    size = a.y.shape[0]
    if n == size:
        return a
    take = np.concatenate([np.arange(size), np.zeros(n - size, np.int64)])
    rows = lambda v: v[take]            # noqa: E731
    return ProblemArrays(
        y=rows(a.y), X=rows(a.X), offset=rows(a.offset),
        weights=np.concatenate([a.weights, np.zeros(n - size)]), trials=rows(a.trials),
        index=tuple(rows(i) for i in a.index), Z=tuple(rows(z) for z in a.Z))


def padded(problem: Problem) -> tuple[Problem, tuple[int, ...] | None]:
    """The problem a fit program runs: rows and levels rounded up (a small problem: a large
    one compiles in a fraction of its run time and is fitted as it is), names dropped; and
    the problem's own numbers of levels, for :func:`cut`, or None where none was padded."""
    s, host = problem.structure, host_arrays(problem)
    levels = tuple(f.n_levels for f in s.factors)
    n = host.y.shape[0]
    if problem.large:
        return replace(problem, structure=anonymous(s)), None
    rows = _pow2(n, POW2_ROWS)
    if rows >= LARGE_N:
        rows = n
    bucket = tuple(_pow2(g, POW2_LEVELS) if k == 0 else bucket_size(g)
                   for k, g in enumerate(levels))
    target = with_levels(s, bucket)
    # the padded structure must take the same path (the Schur update's sparse or dense form)
    if (uses_sparse_blocks(target) != uses_sparse_blocks(s)
            or sps.sparse_schur_pays(target, host.X.shape[1] + 1)
            != sps.sparse_schur_pays(s, host.X.shape[1] + 1)):
        bucket, target = levels, s
    arrays = pad_rows(host, rows)
    out = replace(problem, structure=anonymous(target), arrays=arrays)
    return out, (levels if bucket != levels else None)


def cut(raw, structure: ReStructure, levels: Sequence[int] | None):
    """A fit of the padded ``structure`` cut to the problem's own ``levels`` (its random
    effects and their covariances; the parameters are not padded)."""
    if levels is None:
        return raw
    b = tuple(np.asarray(bf)[:g] for bf, g in zip(raw.b, levels))
    bcov = tuple(np.asarray(c)[:g] for c, g in zip(raw.b_cov, levels))
    u, pos, flat = [], 0, np.asarray(raw.u)
    for f, g in zip(structure.factors, levels):
        u.append(flat[..., pos:pos + g * f.q])
        pos += f.n_levels * f.q
    return raw._replace(b=b, b_cov=bcov, u=np.concatenate(u, axis=-1))


__all__ = ["anonymous", "bucket_size", "cut", "pad_rows", "padded", "with_levels"]
