"""The batch engine: one likelihood fit over many same-shape datasets, in rounds.

Under ``vmap`` a ``while_loop`` runs until its slowest member stops, so a batch fitted in
one loop pays every member the iterations of the worst one (sleepstudy REML, 1,000
simulated datasets: median 12 BFGS iterations, maximum 38).  Here the fit is split into
three compiled programs over the stacked batch:

* ``init``: each member's cross-products (or arrays), starting point and first gradient;
* ``step``: BFGS iterations up to a (traced) iteration bound;
* ``finish``: the Hessian at the optimum and everything a result needs.

The engine runs one short round of ``step`` over the whole batch, then gathers the members
that have not stopped into a smaller, fixed-size batch (*compaction*) and runs further
rounds on those alone; finished members cost nothing more.  Each program is compiled once
per batch shape and kept in the one program cache, so a second batch of the same shape
compiles nothing; ``seconds`` says how long compiling and running took.
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..core.laplace import GlmmModel
from ..core.lmm import lmm_data, refit_data
from ..core.problem import Problem
from .aot import AheadOfTime
from .cache import program
from .likelihood import (RawFit, glmm_finish, glmm_objective, glmm_start, lmm_finish,
                         lmm_objective, uses_lmm)
from .optimize import _value_and_grad, flat_init, flat_result, flat_run

MAXITER = 500
# Evaluations in a round over the whole batch (while more than half its members run) and in
# a round over the compacted batch of the members left.
FULL_ROUND = 8
LATER_ROUND = 16
# The compacted batch: this fraction of the batch (at least the device count).
COMPACT_FRACTION = 8
PILOT_MAXITER = 200


class BatchTimes(NamedTuple):
    compile: float
    run: float
    rounds: int


# ----------------------------------------------------------------------------- one member
class _Kind(NamedTuple):
    """The three per-member functions of one kind of fit (LMM or GLMM)."""

    init: Callable      # (data, start) -> (member data, BfgsState)
    step: Callable      # (member data, state, until) -> state
    finish: Callable    # (member data, state) -> RawFit


def _lmm_kind(problem: Problem, reml: bool) -> _Kind:
    s, p = problem.structure, problem.design.n_fixef

    def vg(d):
        return _value_and_grad(lmm_objective(s, d, p, reml), False, None)

    def init(d, theta0, Hinv0):
        return d, flat_init(theta0, Hinv0=Hinv0)

    def step(d, state, until):
        return flat_run(vg(d), state, until)

    def finish(d, state):
        return lmm_finish(s, d, p, reml, flat_result(state))

    return _Kind(init, step, finish)


def _glmm_kind(problem: Problem, n_agq: int) -> _Kind:
    s, fam = problem.structure, problem.family

    def model(a):
        return GlmmModel(s, fam, a, problem.n_phi)

    def vg(a):
        return _value_and_grad(glmm_objective(model(a), n_agq), True, 0)

    def init(a, phi0, x0, Hinv0):
        # x0 holding a NaN: start where a single fit starts (lme4's theta, the GLM's beta);
        # x0 is one vector for the batch, so the condition is not batched and the GLM fit
        # is skipped, not computed and discarded
        x0 = jax.lax.cond(jnp.all(jnp.isfinite(x0)), lambda: x0,
                          lambda: glmm_start(model(a), phi0))
        return a, flat_init(x0, jnp.zeros(s.n_u), Hinv0=Hinv0)

    def step(a, state, until):
        return flat_run(vg(a), state, until)

    def finish(a, state):
        return glmm_finish(model(a), flat_result(state))

    return _Kind(init, step, finish)


# ----------------------------------------------------------------------------- programs
def _programs(problem: Problem, method: str, n_agq: int, refit: bool):
    """The batch's three compiled programs (cached by structure, family and method)."""
    s, fam = problem.structure, problem.family
    if uses_lmm(problem, method):
        reml = method == "reml"
        kind = _lmm_kind(problem, reml)
        if refit:       # one design, many responses: (arrays, Y, theta0, Hinv0)
            prep = lambda a, Y, t0, H0: jax.vmap(kind.init, in_axes=(0, None, None))(
                refit_data(s, a, Y), t0, H0)
        else:           # stacked arrays: (arrays, theta0, Hinv0)
            prep = lambda a, t0, H0: jax.vmap(lambda ai: kind.init(lmm_data(s, ai), t0, H0))(a)
        key = ("batch-lmm", s, reml, refit, problem.design.n_fixef)
    else:
        kind = _glmm_kind(problem, n_agq)
        prep = jax.vmap(kind.init, in_axes=(0, 0, None, None))   # (arrays, phi0, x0, Hinv0)
        key = ("batch-glmm", s, fam, n_agq, problem.design.n_fixef)

    def build():
        step = jax.vmap(kind.step, in_axes=(0, 0, None))
        return (AheadOfTime(jax.jit(prep)), AheadOfTime(jax.jit(step)),
                AheadOfTime(jax.jit(jax.vmap(kind.finish))))

    return program(key, build)


def _compiled(fn: AheadOfTime, args, clock: list) -> Callable:
    start = time.perf_counter()
    exe = fn.prepare(*args, background=False).result()
    clock[0] += time.perf_counter() - start
    return exe


# ----------------------------------------------------------------------------- sharding
def shard(tree):
    """Place a stacked batch across the local devices (its leading axis split evenly)."""
    devices = jax.devices()
    n = jax.tree.leaves(tree)[0].shape[0]
    if len(devices) < 2 or n % len(devices):
        return tree
    mesh = Mesh(np.array(devices), ("data",))
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec("data")))


def compact_size(batch: int) -> int:
    """Size of the compacted batch the stragglers run in: a multiple of the device count."""
    ndev = len(jax.devices())
    size = max(1, -(-batch // COMPACT_FRACTION))
    return min(batch, -(-size // ndev) * ndev)


# Gathering and scattering a batch's members happens on the host: a compiled gather of the
# whole tree took 0.1 to 0.2 s to compile for each shape (a cold cbpp batch: 0.42 s), and
# the arrays are small (a 1,000-member batch's state and data: a few MB).
def _take(tree, idx):
    return jax.tree.map(lambda v: np.asarray(v)[idx], jax.device_get(tree))


def _put(tree, idx, sub):
    host = jax.device_get(tree)

    def put(v, w):
        v = np.array(v)
        v[idx] = np.asarray(w)
        return v

    return jax.tree.map(put, host, jax.device_get(sub))


# ----------------------------------------------------------------------------- the engine
def _pilot_start(step, data, state, size: int, clock: list):
    """Fit the batch's first ``size`` members from lme4's start; the optimum (and BFGS
    inverse Hessian) of the one nearest their median starts every member.  Same-model
    datasets have nearby optima: sleepstudy REML, 1,000 datasets, 25 evaluations a member
    from lme4's start and 8 from a nearby optimum."""
    idx = np.arange(size) % int(state.status.shape[0])
    sub_data, sub = shard(_take(data, idx)), shard(_take(state, idx))
    bound = 0
    while bound < PILOT_MAXITER:
        bound += LATER_ROUND
        until = jnp.asarray(bound)
        sub = _compiled(step, (sub_data, sub, until), clock)(sub_data, sub, until)
        if not np.any(np.asarray(sub.status) < 0):
            break
    x, ok = np.asarray(sub.x), np.asarray(sub.status) == 0
    if not ok.any():
        return state                   # no pilot converged: every member starts as given
    xs = x[ok]
    pick = np.flatnonzero(ok)[np.argmin(np.sum((xs - np.median(xs, axis=0)) ** 2, axis=1))]
    x0, H0 = jnp.asarray(x[pick]), jnp.asarray(np.asarray(sub.Hinv)[pick])
    B = int(state.status.shape[0])
    return shard(state._replace(x=jnp.broadcast_to(x0, (B,) + x0.shape),
                          x0=jnp.broadcast_to(x0, (B,) + x0.shape),
                          Hinv=jnp.broadcast_to(H0, (B,) + H0.shape),
                          scaled=jnp.ones(B, bool)))


def _compile_ahead(step, finish, data, state, size: int, pilot: bool) -> None:
    """Compile, on the compile thread, the programs needed later (the compacted batch's
    step, or the full batch's when a pilot needs the compacted one first; then finish)
    while this thread compiles and runs the first: two cores, half the wait (sleepstudy
    refits: four programs, 4.3 s one after the other)."""
    B = int(state.status.shape[0])
    until = jnp.asarray(0)
    if size < B:
        idx = np.zeros(size, np.int64)
        sub = (shard(_take(data, idx)), shard(_take(state, idx)), until)
        step.prepare(*(sub if not pilot else (data, state, until)))
    finish.prepare(data, state)


def fit_batch(problem: Problem, method: str, options: dict, args: tuple, refit: bool,
              maxiter: int = MAXITER, pilot: bool = False) -> tuple[RawFit, BatchTimes]:
    """Fit every member of a stacked batch; returns the stacked :class:`RawFit` on the host
    and the seconds spent compiling and running.

    With ``pilot`` a few members are fitted first and start the others (see
    :func:`_pilot_start`).  ``args`` are the ``init`` program's arguments: ``(arrays, theta0)`` for stacked LMM
    datasets, ``(arrays, Y, theta0)`` for one design with many responses (``refit``), and
    ``(arrays, phi0)`` (both stacked) for a GLMM.
    """
    n_agq = int(options.get("agq_points", 25)) if method == "agq" else 1
    init, step, finish = _programs(problem, method, n_agq, refit)
    clock = [0.0]
    start = time.perf_counter()
    run_init = _compiled(init, args, clock)
    data, state = shard(run_init(*args))
    B = int(state.status.shape[0])
    size = compact_size(B)
    _compile_ahead(step, finish, data, state, size, pilot)
    if pilot and size < B:
        state = _pilot_start(step, data, state, size, clock)
    rounds, bound = 0, 0
    n_hess = 2 * int(state.x.shape[1])            # the Hessian's evaluations, after the fit
    while bound < maxiter + n_hess:
        todo = np.flatnonzero((np.asarray(state.status) < 0) |
                              (np.asarray(state.phase) < n_hess))
        if not todo.size:
            break
        rounds += 1
        if 2 * todo.size > B:       # most members still running: a short round for all
            bound = min(bound + FULL_ROUND, maxiter + n_hess)
            until = jnp.asarray(bound)
            run_step = _compiled(step, (data, state, until), clock)
            state = shard(run_step(data, state, until))
            continue
        bound = min(bound + LATER_ROUND, maxiter + n_hess)
        until = jnp.asarray(bound)
        for first in range(0, todo.size, size):
            idx = todo[first:first + size]
            idx = np.concatenate([idx, np.full(size - idx.size, idx[0])])   # pad: repeats
            sub_data, sub_state = shard(_take(data, idx)), shard(_take(state, idx))
            run_sub = _compiled(step, (sub_data, sub_state, until), clock)
            state = shard(_put(state, idx, run_sub(sub_data, sub_state, until)))
    run_finish = _compiled(finish, (data, state), clock)
    raw = jax.device_get(run_finish(data, state))
    total = time.perf_counter() - start
    return raw, BatchTimes(clock[0], total - clock[0], rounds)

