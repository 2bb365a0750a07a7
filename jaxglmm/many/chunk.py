"""One chunk of datasets: bucketed, padded, fitted by the batch engine, judged per dataset.

:func:`fit_chunk` is what a worker runs (locally, or on a Dask worker): it takes a
picklable :class:`Payload` (the run's :class:`~jaxglmm.many.plan.Spec` and the chunk's rows
of the long design, as numpy arrays) and returns a picklable :class:`ChunkFits` (numpy
only).  A dataset that fails (no rows, a rank-deficient design, a non-finite or
non-converged fit) is flagged in its own row; it never stops the chunk.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
from .._lazy import pandas as pd

from ..core.problem import Problem, ProblemArrays
from ..fit.batched import fit_batch, slot_size
from ..fit.buckets import cut, with_levels
from ..fit.convergence import judge_many
from ..fit.likelihood import RawFit, uses_lmm
from ..methods import get_method
from .plan import Member, Spec, batch_size, bucket_key


@dataclass
class Payload:
    spec: Spec
    ids: list                        # labels of the chunk's datasets
    arrays: ProblemArrays            # numpy: the chunk's rows of the long design
    members: list                    # Member | None per dataset, rows into ``arrays``
    start: tuple | None = None       # (x0, Hinv0) for every member, or None: a pilot


@dataclass
class Bucket:
    """Fits of the datasets of one shape bucket, stacked (numpy)."""

    positions: np.ndarray            # the datasets' positions in the chunk
    raw: RawFit                      # stacked over them, levels padded
    structure: object                # the padded structure the bucket was fitted with
    members: list


@dataclass
class ChunkFits:
    """The fits of one chunk, one entry per dataset (numpy only: picklable)."""

    ids: list
    buckets: list
    converged: np.ndarray
    singular: np.ndarray
    messages: list                   # tuple of str per dataset
    seconds: dict = field(default_factory=dict)
    spec: Spec | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def stacked(self, name: str, shape: tuple = ()) -> np.ndarray:
        """One RawFit field over the chunk's datasets (NaN where a dataset has no fit)."""
        out = np.full((len(self.ids),) + shape, np.nan)
        for b in self.buckets:
            out[b.positions] = np.asarray(getattr(b.raw, name)).reshape((-1,) + shape)
        return out

    def raw(self, k: int) -> RawFit | None:
        """Dataset k's fit, cut to its own numbers of levels (None: not fitted)."""
        for b in self.buckets:
            hit = np.flatnonzero(b.positions == k)
            if hit.size:
                j = int(hit[0])
                if b.members[j] is None:            # one design (refit_many): no padding
                    return jax.tree.map(lambda v: np.asarray(v)[j], b.raw)
                return _unpad(b.raw, j, b.members[j], b.structure)
        return None

    def wide(self) -> pd.DataFrame:
        """One row per dataset: dataset, the fixed effects, loglik, converged, message."""
        names = list(self.spec.fixef_names)
        table = pd.DataFrame(self.stacked("beta", (len(names),)), columns=names)
        table.insert(0, "dataset", list(self.ids))
        table["loglik"] = self.stacked("loglik")
        table["converged"] = self.converged
        table["message"] = ["; ".join(m) for m in self.messages]
        return table


# ----------------------------------------------------------------------------- padding
def _stack_bucket(a: ProblemArrays, members: list[Member], n: int) -> ProblemArrays:
    """The members' rows stacked (B, n, ...): each padded to n rows with copies of its first
    row, whose weight is set to 0, and level 0 (any level: the row adds nothing)."""
    B = len(members)
    take = np.empty((B, n), np.int64)
    pad = np.zeros((B, n), bool)
    index = [np.zeros((B, n), np.int32) for _ in a.index]
    for k, m in enumerate(members):
        size = m.rows.size
        take[k, :size] = m.rows
        take[k, size:] = m.rows[0]
        pad[k, size:] = True
        for f, idx in enumerate(m.index):
            index[f][k, :size] = idx
    rows = lambda v: np.asarray(v)[take]
    weights = np.where(pad, 0.0, rows(a.weights))
    return ProblemArrays(y=rows(a.y), X=rows(a.X), offset=rows(a.offset), weights=weights,
                         trials=rows(a.trials), index=tuple(index), Z=tuple(rows(z) for z in a.Z))


def _unpad(raw: RawFit, k: int, member: Member, structure) -> RawFit:
    """Dataset k's row of a stacked bucket fit, cut to its own numbers of levels."""
    row = jax.tree.map(lambda v: np.asarray(v)[k], raw)
    return cut(row, structure, [lv.size for lv in member.levels])


# ----------------------------------------------------------------------------- one chunk
def bucket_structure(spec: Spec, members: list[Member]):
    """The structure a bucket of these members is fitted with: each factor padded to the
    most levels any of them has."""
    levels = [max(m.levels[f].size for m in members) for f in range(len(members[0].levels))]
    return with_levels(spec.structure, levels)


def _bucket_args(spec: Spec, problem: Problem, arrays: ProblemArrays, start, B: int):
    x0, H0 = start if start is not None else (None, None)
    k = spec.structure.n_theta + (0 if problem.exact_lmm else len(spec.fixef_names) + problem.n_phi)
    x0 = jnp.full(k, jnp.nan) if x0 is None else jnp.asarray(x0)
    H0 = jnp.full((k, k), jnp.nan) if H0 is None else jnp.asarray(H0)
    if uses_lmm(problem, get_method(spec.method)):
        x0 = jnp.where(jnp.isfinite(x0), x0, jnp.asarray(spec.structure.theta_init()))
        # host arrays: the engine hands the slots their members' rows (fit/batched.py)
        return (arrays, x0, H0)
    fam = spec.family
    phi0 = np.stack([np.asarray(fam.init_params(arrays.y[b][arrays.weights[b] > 0],
                                                arrays.trials[b][arrays.weights[b] > 0]),
                                np.float64) for b in range(B)])
    return (arrays, phi0, x0, H0)


def fit_chunk(payload: Payload) -> ChunkFits:
    """Fit one chunk of datasets (see the module docstring)."""
    spec = payload.spec
    n = len(payload.ids)
    buckets: list = []
    converged = np.zeros(n, bool)
    singular = np.zeros(n, bool)
    messages: list = [()] * n
    groups = defaultdict(list)
    for k, m in enumerate(payload.members):
        if m is None:
            messages[k] = ("no usable rows (every row has a missing value in a used column)",)
        elif m.invalid:
            messages[k] = (f"not fitted: {m.invalid}",)
        else:
            groups[bucket_key(m)].append(k)
    clock = {"compile": 0.0, "run": 0.0}
    ndev = len(jax.devices())
    start = time.perf_counter()
    for positions in groups.values():
        members = [payload.members[k] for k in positions]
        n_pad = max(m.rows.size for m in members)
        B = len(members)
        # one compiled shape per bucket: the slots of a power-of-two batch (no dummies)
        slots = slot_size(batch_size(B, ndev))
        arrays = _stack_bucket(payload.arrays, members, n_pad)
        structure = bucket_structure(spec, members)
        shape = SimpleNamespace(n_fixef=len(spec.fixef_names), nobs=n_pad)
        phi_len = np.size(spec.family.init_params(arrays.y[0], arrays.trials[0]))
        problem = Problem(structure, spec.family, None, shape, np.zeros(phi_len))
        args = _bucket_args(spec, problem, arrays, payload.start, B)
        raw, times = fit_batch(problem, get_method(spec.method), spec.options, args,
                               refit=False, pilot=payload.start is None, slots=slots)
        clock["compile"] += times.compile
        verdicts = judge_many(raw.status, raw.grad, raw.hessian, raw.theta,
                              structure.theta_diagonal(), raw.n_iter)
        for j, k in enumerate(positions):
            converged[k], singular[k] = verdicts[j].converged, verdicts[j].singular
            messages[k] = verdicts[j].messages
        buckets.append(Bucket(np.asarray(positions), raw, structure, members))
    # run: everything but compiling (the engine's rounds, and stacking and judging here)
    clock["total"] = time.perf_counter() - start
    clock["run"] = clock["total"] - clock["compile"]
    return ChunkFits(list(payload.ids), buckets, converged, singular, messages, clock, spec)
