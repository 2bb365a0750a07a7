"""The batch engine: one likelihood fit over many same-shape datasets, in rounds.

Under ``vmap`` a ``while_loop`` runs until its slowest member stops, so a batch fitted in
one loop pays every member the iterations of the worst one.  Here the fit is split into
three compiled programs over the stacked batch:

* ``init``: each member's cross-products (or arrays) and starting point;
* ``step``: updates of the one BFGS (:mod:`jaxglmm.fit.optimize`, its one-evaluation line
  search :class:`~jaxglmm.fit.optimize.OneTrial`), then the finite-difference Hessian's
  evaluations, up to a (traced) bound;
* ``finish``: the Hessian at the optimum and everything a result needs.

The members run in a fixed number of *slots*, in short rounds of ``step``; after each
round the members that have stopped leave their slots and the next ones take them
(continuous batching), so finished members cost nothing more and every program runs at one
shape, the slots'.  Each program is compiled once per slot shape and kept in the one
program cache, so a second batch of the same shape compiles nothing; ``seconds`` says how
long compiling and running took (measurements: docs/benchmarks.md, "fit/batched.py").
"""
from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..core.laplace import GlmmModel
from ..core.lmm import lmm_data, refit_data
from ..core.problem import Problem
from .aot import AheadOfTime
from .boundary import (MAX_PROBES, at_zero, boundary_probe, diagonal_mask, floor_start,
                       improved)
from . import cache
from .cache import CPU_OPTIONS, program
from .likelihood import (COMPILER_OPTIONS, RawFit, glmm_finish, glmm_objective, glmm_start, lmm_finish,
                         lmm_objective, uses_lmm)
from .optimize import (LINESEARCH, ONE_TRIAL, hessian_result, hessian_run, init as bfgs_init,
                       run_then_hessian, value_and_grad)

MAXITER = 500
# Evaluations a member makes in a round, between refills of the slots.
ROUND = 8
# The slots: this fraction of the batch, a power of two within these bounds.
SLOT_FRACTION = 8
MIN_SLOTS = 32
MAX_SLOTS = 1024
PILOT_MAXITER = 200
# prepare_batch's thread (its compiles of step go on to aot's compile thread)
_PREPARE = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxglmm-prepare")


class BatchTimes(NamedTuple):
    compile: float
    run: float
    rounds: int


# ----------------------------------------------------------------------------- one member
class _MemberFunctions(NamedTuple):
    """The three per-member functions of one kind of fit (LMM or GLMM)."""

    init: Callable      # (data, start) -> (member data, HessianRun)
    step: Callable      # (member data, state, until) -> state
    finish: Callable    # (member data, state) -> RawFit


def _lmm_kind(problem: Problem, reml: bool) -> _MemberFunctions:
    s, p = problem.structure, problem.design.n_fixef

    def vg(d):
        return value_and_grad(lmm_objective(s, d, p, reml))

    def init(d, theta0, Hinv0):
        # forward differences for the Hessian: an LMM's theta Hessian only feeds the
        # convergence verdict and later refits' starting inverse Hessian (beta's covariance
        # is exact), and k gradients instead of 2k save about a tenth of a sleepstudy batch
        return d, hessian_run(bfgs_init(theta0, Hinv0=Hinv0), sides=1)

    def step(d, state, until):
        return run_then_hessian(vg(d), state, ONE_TRIAL, until, maxiter=MAXITER)

    def finish(d, state):
        return lmm_finish(s, d, p, reml, hessian_result(state))

    return _MemberFunctions(init, step, finish)


def _glmm_kind(problem: Problem, n_agq: int) -> _MemberFunctions:
    s, fam = problem.structure, problem.family

    def model(a):
        return GlmmModel(s, fam, a, problem.n_phi)

    def vg(a):
        return value_and_grad(glmm_objective(model(a), n_agq), True, 0)

    def init(a, phi0, x0, Hinv0):
        # x0 holding a NaN: start where a single fit starts (lme4's theta, the GLM's beta);
        # x0 is one vector for the batch, so the condition is not batched and the GLM fit
        # is skipped, not computed and discarded
        x0 = jax.lax.cond(jnp.all(jnp.isfinite(x0)), lambda: x0,
                          lambda: glmm_start(model(a), phi0))
        return a, hessian_run(bfgs_init(x0, jnp.zeros(s.n_u), Hinv0=Hinv0))

    def step(a, state, until):
        return run_then_hessian(vg(a), state, ONE_TRIAL, until, maxiter=MAXITER)

    def finish(a, state):
        return glmm_finish(model(a), hessian_result(state))

    return _MemberFunctions(init, step, finish)


# ----------------------------------------------------------------------------- programs
def _programs(problem: Problem, method, n_agq: int, refit: bool):
    """The batch's three compiled programs (cached by structure, family and method), and
    which of the ``init`` program's arguments are stacked over members."""
    s, fam = problem.structure, problem.family
    if uses_lmm(problem, method):
        reml = method.reml
        kind = _lmm_kind(problem, reml)
        if refit:       # one design, many responses: (arrays, Y, theta0, Hinv0)
            prep = lambda a, Y, t0, H0: jax.vmap(kind.init, in_axes=(0, None, None))(
                refit_data(s, a, Y), t0, H0)
            stacked = (False, True, False, False)
        else:           # stacked arrays: (arrays, theta0, Hinv0)
            prep = lambda a, t0, H0: jax.vmap(lambda ai: kind.init(lmm_data(s, ai), t0, H0))(a)
            stacked = (True, False, False)
        key = ("batch-lmm", s, reml, refit, problem.design.n_fixef)
    else:
        kind = _glmm_kind(problem, n_agq)
        prep = jax.vmap(kind.init, in_axes=(0, 0, None, None))   # (arrays, phi0, x0, Hinv0)
        stacked = (True, True, False, False)
        key = ("batch-glmm", s, fam, n_agq, problem.design.n_fixef)

    def build():
        # ``until`` is per member: each slot holds a member at its own iteration count
        step = jax.vmap(kind.step, in_axes=(0, 0, 0))
        return (AheadOfTime(cache.jit(prep), _batch_options),
                AheadOfTime(cache.jit(step), _batch_options),
                AheadOfTime(cache.jit(jax.vmap(kind.finish)), _batch_options))

    return program(key, build), stacked


# A batch program whose arguments hold fewer numbers than this compiles with XLA's backend
# optimizations off, as a single fit does (fit.likelihood.COMPILER_OPTIONS): compile time
# dominates it.  A larger one keeps them: fusing the vmapped elementwise work pays (cbpp,
# 1,000 refits in 128 slots, about 70,000 numbers: 0.4 s vs 1.4 s warm at level 0, for
# 1.5 s vs 2.8 s of compile).
SMALL_BATCH = 1 << 14


def _batch_options(*args) -> dict:
    size = sum(math.prod(np.shape(x)) for x in jax.tree.leaves(args))
    return COMPILER_OPTIONS if size < SMALL_BATCH else CPU_OPTIONS


# ----------------------------------------------------------------------------- sharding
def _mesh_sharding():
    devices = jax.devices()
    return NamedSharding(Mesh(np.array(devices), ("data",)), PartitionSpec("data"))


def shard(tree):
    """Place a stacked batch across the local devices (its leading axis split evenly)."""
    n = jax.tree.leaves(tree)[0].shape[0]
    if len(jax.devices()) < 2 or n % len(jax.devices()):
        return tree
    return jax.device_put(tree, _mesh_sharding())


def _abstract(tree):
    """Shapes (and, across several devices, the batch sharding) of a stacked tree."""
    sharding = _mesh_sharding() if len(jax.devices()) > 1 else None
    # not weakly typed: the programs are called with the host's (numpy) arrays
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding,
                                                       weak_type=False), tree)


def slot_size(batch: int) -> int:
    """How many members run at once (the *slots*): an eighth of the batch, a power of two
    from MIN_SLOTS to MAX_SLOTS (never above the batch's own power of two), a multiple of the
    device count.  Every program runs at this one shape: see :func:`fit_batch`."""
    ndev = len(jax.devices())
    pow2 = lambda v: 1 << max(0, int(v) - 1).bit_length()        # noqa: E731
    size = min(max(MIN_SLOTS, pow2(-(-batch // SLOT_FRACTION))), MAX_SLOTS, pow2(batch))
    return -(-size // ndev) * ndev


# Members move between the host-side batch and the slots on the host: a compiled gather of
# the whole tree took 0.1 to 0.2 s to compile for each shape (a cold cbpp batch: 0.42 s),
# and the arrays are small (a 1,000-member batch's state and data: a few MB).
def _host(tree):
    return jax.tree.map(np.array, jax.device_get(tree))          # writable copies


def _rows(tree, idx):
    return jax.tree.map(lambda v: v[idx], tree)


def _set_rows(tree, idx, sub) -> None:
    def put(v, w):
        v[idx] = w
    jax.tree.map(put, tree, sub)


def _members(args, stacked, idx):
    return tuple(jax.tree.map(lambda v: np.asarray(v)[idx], a) if st else a
                 for a, st in zip(args, stacked))


def _compiled(fn: AheadOfTime, args, clock: list) -> Callable:
    start = time.perf_counter()
    exe = fn.prepare(*args, background=False).result()
    clock[0] += time.perf_counter() - start
    return exe


# ----------------------------------------------------------------------------- boundary
def _floored(problem: Problem, args: tuple) -> tuple:
    """The batch's arguments with its start (``x0``, ``Hinv0``: the last two) moved off a
    zero variance (:func:`jaxglmm.fit.boundary.floor_start`)."""
    x0, H0 = args[-2], args[-1]
    mask = diagonal_mask(np.shape(x0)[0], problem.structure.theta_diagonal())
    xa = np.asarray(x0)
    x, H = floor_start(xa, np.asarray(H0), mask)
    if x is xa:
        return args
    return args[:-2] + (jnp.asarray(x), jnp.asarray(H))


def _restart(st, x):
    """Host states (a few members) started afresh at ``x``, as the optimizer's ``init``
    with no inverse Hessian (the first step is the gradient's, at most 0.5 in any entry);
    each keeps its aux (a GLMM's modes: the next mode search starts there)."""
    zero = lambda v: np.zeros_like(v)             # noqa: E731
    o, k = st.opt, x.shape[1]
    o = o._replace(x=x.copy(), f=np.full_like(o.f, np.inf), g=zero(o.g),
                   Hinv=np.broadcast_to(np.eye(k), o.Hinv.shape).copy(), d=zero(o.d),
                   t=zero(o.t), scaled=zero(o.scaled), it=zero(o.it), nev=zero(o.nev),
                   nback=zero(o.nback), stall=zero(o.stall),
                   status=np.full_like(o.status, -1), x0=x.copy(), f0=zero(o.f0))
    return st._replace(opt=o, phase=zero(st.phase), hess_g=zero(st.hess_g))


# ----------------------------------------------------------------------------- the engine
def typical_member(ok: np.ndarray, x: np.ndarray) -> int | None:
    """The index of the member among ``ok`` whose ``x`` is nearest the median of theirs, or
    None where no member is ``ok``: the start of the members after a pilot."""
    ok = np.asarray(ok, bool)
    if not ok.any():
        return None
    xs = np.asarray(x)[ok]
    return int(np.flatnonzero(ok)[np.argmin(np.sum((xs - np.median(xs, axis=0)) ** 2, axis=1))])


def _pilot_pick(state):
    """(x, Hinv) of the converged member nearest the median of the converged ones, or None."""
    o = state.opt
    pick = typical_member(np.asarray(o.status) == 0, o.x)
    if pick is None:
        return None
    return np.asarray(o.x)[pick], np.asarray(o.Hinv)[pick]


class _Compiled(NamedTuple):
    programs: tuple     # init and finish compiled for the slots; step (compiling)
    abstract: tuple     # the shapes of step's arguments (member data, state, until)
    first: tuple        # init's arguments for the first slots' members
    chunks: list        # the members of each slot-full, in order (the last wraps around)
    slots: int
    size: int           # members in the batch
    stacked: tuple      # which of init's arguments are stacked over members


def _compile_batch(problem, method, options, args, refit, slots, clock) -> _Compiled:
    """The batch's three programs compiled for its slots (or found compiled)."""
    n_agq = method.points(options)
    (init, step, finish), stacked = _programs(problem, method, n_agq, refit)
    B = int(next(np.shape(jax.tree.leaves(a)[0])[0] for a, st in zip(args, stacked) if st))
    S = slot_size(B) if slots is None else int(slots)
    chunks = [np.arange(i, i + S) % B if i + S > B else np.arange(i, i + S)
              for i in range(0, B, S)]
    # Lower the programs first (init's output gives the others' shapes) and compile step,
    # the longest, on the compile thread while this one compiles init and then finish: two
    # cores, two compiles (cold cbpp refits under load: init 1.1 s and finish 0.7 s here,
    # step 2.7 s there)
    first = _members(args, stacked, chunks[0])
    t0 = time.perf_counter()
    data_abs, state_abs = _abstract(init.out_info(*first))
    it_abs = state_abs.opt.it
    until_abs = jax.ShapeDtypeStruct((S,), it_abs.dtype, sharding=it_abs.sharding)
    step.prepare(data_abs, state_abs, until_abs)
    clock[0] += time.perf_counter() - t0
    run_init = _compiled(init, first, clock)
    run_finish = _compiled(finish, (data_abs, state_abs), clock)
    return _Compiled((run_init, step, run_finish), (data_abs, state_abs, until_abs),
                     first, chunks, S, B, stacked)


def prepare_batch(problem: Problem, method, options: dict, args: tuple, refit: bool,
                  slots: int | None = None) -> Future:
    """Compile, in a background thread, the programs :func:`fit_batch` will run for a batch
    of these arguments' shapes (their values are not used), so a caller can do other work
    (simulate the responses) meanwhile; ``fit_batch`` then finds them compiled, or waits
    for them.  The future's result is the seconds spent compiling."""
    # made (cached) here, so no thread races to make it
    _programs(problem, method, method.points(options), refit)

    def run():
        clock = [0.0]
        c = _compile_batch(problem, method, options, args, refit, slots, clock)
        _compiled(c.programs[1], c.abstract, clock)          # step, compiling meanwhile
        return clock[0]

    return _PREPARE.submit(run)


def fit_batch(problem: Problem, method, options: dict, args: tuple, refit: bool,
              maxiter: int = MAXITER, pilot: bool = False,
              slots: int | None = None) -> tuple[RawFit, BatchTimes]:
    """Fit every member of a stacked batch with ``method`` (a :class:`jaxglmm.methods.Method`);
    returns the stacked :class:`RawFit` on the host and the seconds spent compiling and
    running.

    ``args`` are the ``init`` program's arguments: ``(arrays, theta0, Hinv0)`` for stacked
    LMM datasets, ``(arrays, Y, theta0, Hinv0)`` for one design with many responses
    (``refit``), and ``(arrays, phi0, x0, Hinv0)`` (arrays and phi0 stacked) for a GLMM.

    The members run in a fixed number of *slots* (:func:`slot_size`), in rounds of
    ``ROUND`` evaluations; after each round the members that have finished leave their
    slots and the next ones take them, so no member waits for a slower one and every
    program (init, step and finish, each over the slots) compiles at one shape.  With
    ``pilot`` the first slots' members start from lme4's start and the others from the
    optimum (and BFGS inverse Hessian) of the first converged member nearest their median:
    same-model datasets have nearby optima, so they take a few times fewer evaluations.

    No member starts or stops at a zero variance it should leave (:mod:`jaxglmm.fit.
    boundary`): a start (given, or the pilot's) with a diagonal theta entry at zero is moved
    off it, and a member that stops with one at zero is restarted a step inside, the
    restart kept only where it ends at a lower deviance (before, bootstraps from a singular
    fit left zero in none of their replicates, where lme4's bootMer leaves it in about 40%).

    ``slots`` (default :func:`slot_size` of the batch) fixes the slot count, so batches of
    different sizes share one compiled shape without padding the batch with dummy members
    (the slots wrap).
    """
    clock = [0.0]
    start = time.perf_counter()
    args = _floored(problem, args)
    c = _compile_batch(problem, method, options, args, refit, slots, clock)
    (run_init, step, run_finish), step_args = c.programs, c.abstract
    first, chunks, S, B, stacked = c.first, c.chunks, c.slots, c.size, c.stacked
    # Members are initialized chunk by chunk as the slots reach them, so that those after
    # the pilot start from its optimum (and a GLMM's skip the GLM fit of lme4's start:
    # cbpp, 1,000 refits: 0.29 s of 0.9 s warm)
    first_out = _host(run_init(*first))
    data, state = (jax.tree.map(lambda v: np.empty((B,) + v.shape[1:], v.dtype), t)
                   for t in first_out)
    ready = [0]

    def prepare_upto(n, start):
        while ready[0] < n:
            c = chunks[ready[0] // S]
            if ready[0] == 0:
                d, st = first_out
            else:
                arg = _members(args, stacked, c)
                d, st = _host(run_init(*(arg if start is None else arg[:-2] + start)))
            keep = slice(0, min(S, B - ready[0]))
            _set_rows(data, c[keep], _rows(d, keep))
            _set_rows(state, c[keep], _rows(st, keep))
            ready[0] += S

    prepare_upto(min(S, B), None)
    n_hess = int(state.hess_g.shape[1])           # the Hessian's evaluations, after the fit
    member = np.full(S, -1)                       # the member in each slot (-1: none)
    take = np.arange(S) % B
    sl_data, sl_state = _rows(data, take), _rows(state, take)
    member[:min(S, B)] = np.arange(min(S, B))
    sl_state.opt.status[member < 0], sl_state.phase[member < 0] = 0, n_hess   # empty: stopped
    queued = min(S, B)
    piloting = pilot and B > S
    begin = None                                  # the pilot's start for the queued members
    run_step = _compiled(step, step_args, clock)
    rounds = 0
    # the end-of-fit boundary check (fit.boundary): a member stopped with a diagonal theta
    # entry at zero is restarted off it and run to its end; ``held`` keeps its fit at zero,
    # restored where the restart ends no lower
    mask = diagonal_mask(state.opt.x.shape[1], problem.structure.theta_diagonal())
    probes = np.zeros(B, int)                     # restarts per member
    probing = np.zeros(S, bool)                   # slots whose member is a restart
    held = _rows(sl_state, np.arange(S))
    extra_it = np.zeros(B, np.asarray(state.opt.it).dtype)   # evaluations before restarts
    first_f0 = np.full(B, np.nan)                 # the objective at the member's own start
    while True:
        rounds += 1
        until = sl_state.opt.it + sl_state.phase + ROUND     # loop iterations
        sl_state = _host(run_step(shard(sl_data), shard(sl_state), shard(until)))
        status, phase = sl_state.opt.status, sl_state.phase
        it = sl_state.opt.it + phase
        done = (member >= 0) & (((status >= 0) & (phase >= n_hess)) | (it >= maxiter + n_hess))
        ended = done & probing                    # restarts that have run to their end
        if ended.any():
            keep = ended & improved(sl_state.opt.f, held.opt.f)
            back = ended & ~keep
            _set_rows(sl_state, back, _rows(held, back))
            for j in np.flatnonzero(keep):
                m = member[j]
                extra_it[m] += held.opt.it[j]
                first_f0[m] = held.opt.f0[j] if np.isnan(first_f0[m]) else first_f0[m]
            probing &= ~ended
        edge = done & np.isin(sl_state.opt.status, (0, LINESEARCH)) & \
            at_zero(sl_state.opt.x, mask)
        edge &= probes[np.maximum(member, 0)] < MAX_PROBES
        if edge.any():
            _set_rows(held, edge, _rows(sl_state, edge))
            _set_rows(sl_state, edge, _restart(_rows(sl_state, edge),
                                               boundary_probe(sl_state.opt.x[edge], mask)))
            probes[member[edge]] += 1
            probing |= edge
            done &= ~edge
        if done.any():
            _set_rows(state, member[done], _rows(sl_state, done))
            member[done] = -1
        if piloting:            # no refills yet: every running member is a pilot
            running = member >= 0
            gone = np.setdiff1d(np.arange(S), member[running])
            n_conv = np.sum(state.opt.status[gone] == 0) + np.sum(status[running] == 0)
            if 2 * n_conv >= S or not running.any() or int(it.max()) >= PILOT_MAXITER:
                piloting = False
                begin = _pilot_pick(jax.tree.map(lambda a, b: np.concatenate([a, b]),
                                                 _rows(state, gone), _rows(sl_state, running)))
                if begin is not None:
                    begin = floor_start(begin[0], begin[1], mask)
                    begin = tuple(jnp.asarray(v) for v in begin)
        if not piloting:
            free = np.flatnonzero(member < 0)[:B - queued]
            if free.size:
                new = np.arange(queued, queued + free.size)
                queued += free.size
                prepare_upto(queued, begin)
                _set_rows(sl_data, free, _rows(data, new))
                fresh = _rows(state, new)
                _set_rows(sl_state, free, fresh)
                member[free] = new
        if not (member >= 0).any() and queued >= B:
            break
    outs = [_host(run_finish(shard(_rows(data, c)), shard(_rows(state, c)))) for c in chunks]
    raw = jax.tree.map(lambda *v: np.concatenate(v)[:B], *outs)
    moved = ~np.isnan(first_f0)
    if moved.any():
        raw = raw._replace(n_iter=raw.n_iter + extra_it.astype(raw.n_iter.dtype),
                           objective0=np.where(moved, first_f0, raw.objective0))
    total = time.perf_counter() - start
    return raw, BatchTimes(clock[0], total - clock[0], rounds)
