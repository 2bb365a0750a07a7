"""NUTS, variational inference and MAP on :class:`jaxglmm.bayes.BayesModel`.

Each takes a :class:`~jaxglmm.core.problem.Problem` and returns draws of the model's sites
(chain, draw, ...) in a :class:`BayesRun`; :mod:`jaxglmm.results.build` turns them into the
same :class:`~jaxglmm.results.FitResult` accessors as a likelihood fit (posterior means for
fixef/varcorr/ranef, posterior SDs for fixef_se) plus ``fit.posterior`` (ArviZ
InferenceData) and ``fit.posterior_summary``.
"""
from __future__ import annotations

import sys
import time
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..core.laplace import GlmmModel
from ..fit import likelihood
from ..fit.aot import AheadOfTime
from ..fit.cache import jit, program
from ..fit.optimize import minimize, minimize_optax
from .density import BayesModel, dimension, log_posterior

INITS = ("centre", "ml")
MAP_OPTIMIZERS = ("bfgs", "optax")


def _start(bm: BayesModel) -> dict:
    """Site values at the maximum-likelihood (ML or Laplace) fit."""
    problem = bm.problem
    raw = jax.device_get(likelihood.run_ml(problem))
    return bm.init_values(raw)


def _marginalize(bm: BayesModel, options: dict) -> bool:
    """Whether to sample the collapsed posterior (random effects integrated out exactly,
    then drawn from their exact conditional per draw).  Default: yes where that is exact
    (gaussian, identity link); ``marginalize=False`` samples u jointly (non-centred)."""
    value = options["marginalize"]
    if value is None:
        return bm.spec.exact_marginal
    if value and not bm.spec.exact_marginal:
        raise ValueError("marginalize=True integrates the random effects out exactly, which "
                         "needs the gaussian family with the identity link (and random "
                         f"effects); this model is {bm.problem.family.name} with the "
                         f"{bm.problem.family.link.name} link: leave marginalize unset")
    return bool(value)


def _starts(bm: BayesModel, init: str, n: int, seed: int, jitter: bool = True,
            marginal: bool = False) -> np.ndarray:
    """``n`` starting points on the unconstrained scale (n, dim), apart from each other so
    that R-hat compares chains that started apart:

    * ``"centre"`` (default): :meth:`BayesModel.centre_values` (no fit), each coordinate
      moved by uniform(-1, 1), as Stan's random inits are uniform(-2, 2);
    * ``"ml"``: the maximum-likelihood fit (compiled and run first), moved by N(0, 0.1^2).
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    rng = np.random.default_rng(seed)
    if init == "ml":
        z = bm.unconstrain(_start(bm), marginal)
        move = 0.1 * rng.standard_normal((n,) + z.shape)
    else:
        z = bm.unconstrain(bm.centre_values(), marginal)
        move = rng.uniform(-1.0, 1.0, (n,) + z.shape)
    return z[None] + move if jitter else np.repeat(z[None], n, axis=0)


def show_progress(progress: bool | None) -> bool:
    """Whether to draw a progress bar: ``progress`` when given, else only when stderr is a
    terminal (a log file or a pipe gets no carriage-return lines)."""
    if progress is not None:
        return bool(progress)
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):   # no stderr, or a closed one
        return False


def _progress_bar(total: int, enabled: bool, desc: str):
    if not enabled:
        return None, None
    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc=desc, leave=False)

    def tick(chain, i):
        if int(chain) == 0:
            bar.n = int(i) + 1
            bar.refresh()
    return bar, tick


def _ticker(tick, total: int, chain, i):
    """Report progress about 100 times over ``total`` steps from inside a compiled loop."""
    if tick is not None:
        every = max(total // 100, 1)
        jax.lax.cond(i % every == 0, lambda: jax.debug.callback(tick, chain, i), lambda: None)


# --------------------------------------------------------------------------- NUTS
# Compiled NUTS runs, by model spec and sampler settings.  The data are the runner's
# arguments, so a same-shape dataset reuses one compiled program, with chains in parallel
# across devices (pmap) or vectorized on one (vmap).  (numpyro's MCMC recompiles parallel
# chains on every run: its jit_model_args does not cover them.)
def _runner(bm: BayesModel, settings: tuple, chains: int, parallel: bool, marginal: bool):
    key = ("nuts", bm.spec, settings, chains, parallel, marginal)
    return program(key, lambda: _build_runner(bm, settings, chains, parallel, marginal))


def _build_runner(bm: BayesModel, settings: tuple, chains: int, parallel: bool, marginal: bool):
    warmup, draws, accept, depth, dense, progress = settings
    spec = bm.spec
    # numpyro and optax load on a Bayesian fit's first run, not with jaxglmm (import time)
    from numpyro.infer.hmc import hmc
    init_kernel, sample_kernel = hmc(
        potential_fn_gen=lambda data: lambda z: -log_posterior(spec, z, data, marginal),
        algo="NUTS")
    total = warmup + draws
    bar, tick = _progress_bar(total, progress, "NUTS (chain 1)")

    def one_chain(chain, rng_key, z0, data):
        state = init_kernel(z0, num_warmup=warmup, target_accept_prob=accept,
                            max_tree_depth=depth, dense_mass=dense, model_args=(data,),
                            rng_key=rng_key)

        def step(state, i):
            state = sample_kernel(state, model_args=(data,))
            _ticker(tick, total, chain, i)
            return state, (state.z, state.diverging, state.num_steps)

        _, (zs, div, steps) = jax.lax.scan(step, state, jnp.arange(total))
        return zs[warmup:], div[warmup:], steps[warmup:]

    axes = (0, 0, 0, None)
    chains_fn = jax.pmap(one_chain, in_axes=axes) if parallel else \
        jit(jax.vmap(one_chain, in_axes=axes))
    return AheadOfTime(chains_fn), bar


def run_nuts(problem, options: dict):
    """NUTS; ``options`` hold every option of :data:`jaxglmm.methods.NUTS` (its settings)."""
    bm = BayesModel(problem, options["priors"])
    chains = int(options["chains"])
    layout = options["chain_method"] or (
        "parallel" if len(jax.devices()) >= chains > 1 else "vectorized")
    if layout not in ("parallel", "vectorized"):
        raise ValueError(f"chain_method must be 'parallel' or 'vectorized', got {layout!r}")
    if layout == "parallel" and len(jax.devices()) < chains:
        raise ValueError(f"chain_method 'parallel' needs {chains} devices, JAX sees "
                         f"{len(jax.devices())}; call numpyro.set_host_device_count({chains}) "
                         "before JAX starts, or use 'vectorized'")
    settings = (int(options["warmup"]), int(options["draws"]), float(options["target_accept"]),
                int(options["max_tree_depth"]), bool(options["dense_mass"]),
                show_progress(options["progress"]))
    marginal = _marginalize(bm, options)
    fn, bar = _runner(bm, settings, chains, layout == "parallel", marginal)
    seed = int(options["seed"])
    keys = jax.random.split(jax.random.PRNGKey(seed), chains)
    ids = np.arange(chains)
    dim = dimension(bm.blocks(marginal))
    # the sampler compiles in the background while the start is found and the function
    # from draws to reported values compiles here
    fn.prepare(ids, keys, np.zeros((chains, dim)), bm.data)
    z0 = _starts(bm, options["init"], chains, seed, marginal=marginal)
    bm.prepare_draws((chains, settings[1]), marginal, draw_u=marginal)
    if bar is not None:
        bar.reset()
    zs, div, steps = jax.device_get(fn(ids, keys, z0, bm.data))
    if bar is not None:
        bar.n = bar.total
        bar.refresh()
    steps = np.asarray(steps)
    diag = {"divergences": int(np.sum(div)),
            "max_tree_depth_hits": int(np.sum(steps >= 2 ** settings[3] - 1)),
            "mean_tree_depth": float(np.mean(np.log2(steps + 1))),
            "chain_method": layout, "marginalized": marginal}
    return (bm,) + bm.draws_from_z(zs, marginal, draw_u=marginal, seed=seed + 1) + (diag,)


# --------------------------------------------------------------------------- VI
def _vi_model(spec, marginal, data, z0):
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints
    z = numpyro.sample("z", dist.ImproperUniform(constraints.real_vector, (), z0.shape))
    numpyro.factor("log_posterior", log_posterior(spec, z, data, marginal))


def _guide_dist(kind: str, params: dict):
    import numpyro.distributions as dist
    scale = params["scale"]
    if kind == "meanfield":
        return dist.Normal(params["loc"], scale).to_event(1)
    return dist.LowRankMultivariateNormal(params["loc"], params["cov_factor"] * scale[:, None],
                                          scale * scale)


def _vi_guide(kind: str, rank: int, spec, data, z0):
    """numpyro's AutoNormal / AutoLowRankMultivariateNormal on the flat vector, started at
    ``z0`` with scale 0.01."""
    import numpyro
    from numpyro.distributions import constraints
    params = {"loc": numpyro.param("loc", z0),
              "scale": numpyro.param("scale", jnp.full(z0.shape, 0.01),
                                     constraint=constraints.softplus_positive)}
    if kind == "lowrank":
        params["cov_factor"] = numpyro.param("cov_factor", jnp.zeros(z0.shape + (rank,)))
    numpyro.sample("z", _guide_dist(kind, params))


def _vi_runner(bm: BayesModel, kind: str, rank: int, steps: int, lr: float, progress: bool,
               marginal: bool):
    """Compiled SVI (numpyro's SVI and Trace_ELBO, optax Adam): ``steps`` updates in one
    ``lax.scan``, with the data and the start as arguments."""
    key = ("vi", bm.spec, kind, rank, steps, lr, progress, marginal)
    return program(key, lambda: _build_vi(bm, kind, rank, steps, lr, progress, marginal))


def _build_vi(bm: BayesModel, kind: str, rank: int, steps: int, lr: float, progress: bool,
              marginal: bool):
    # numpyro and optax load on a Bayesian fit's first run, not with jaxglmm (import time)
    import optax
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import optax_to_numpyro
    svi = SVI(partial(_vi_model, bm.spec, marginal), partial(_vi_guide, kind, rank, bm.spec),
              optax_to_numpyro(optax.adam(lr)), Trace_ELBO())
    bar, tick = _progress_bar(steps, progress, "VI")

    def run(rng_key, data, z0):
        state = svi.init(rng_key, data, z0)

        def step(state, i):
            state, loss = svi.update(state, data, z0)
            _ticker(tick, steps, 0, i)
            return state, loss

        state, losses = jax.lax.scan(step, state, jnp.arange(steps))
        return svi.get_params(state), losses

    return AheadOfTime(jit(run)), bar


def run_vi(problem, options: dict):
    """Variational inference; ``options``: every option of :data:`jaxglmm.methods.VI`."""
    bm = BayesModel(problem, options["priors"])
    kind = options["guide"]
    if kind not in ("meanfield", "lowrank"):
        raise ValueError(f"guide must be 'meanfield' or 'lowrank', got {kind!r}")
    marginal = _marginalize(bm, options)
    dim = dimension(bm.blocks(marginal))
    rank = int(options["rank"] or max(int(round(dim ** 0.5)), 1))
    steps, draws, seed = int(options["steps"]), int(options["draws"]), int(options["seed"])
    fn, bar = _vi_runner(bm, kind, rank, steps, float(options["learning_rate"]),
                         show_progress(options["progress"]), marginal)
    key = jax.random.PRNGKey(seed)
    fn.prepare(key, bm.data, np.zeros(dim))
    bm.prepare_draws((1, draws), marginal, draw_u=marginal)
    z0 = _starts(bm, options["init"], 1, 0, jitter=False, marginal=marginal)[0]
    if bar is not None:
        bar.reset()
    params, losses = jax.device_get(fn(key, bm.data, z0))
    if bar is not None:
        bar.n = bar.total
        bar.refresh()
    zs = np.asarray(_guide_dist(kind, params).sample(jax.random.fold_in(key, 1), (1, draws)))
    elbo = -np.asarray(losses)
    window = max(steps // 10, 10)
    late, early = elbo[-window:].mean(), elbo[-2 * window:-window].mean()
    rel = abs(late - early) / max(abs(late), 1.0)
    diag = {"elbo_trace": elbo, "elbo_relative_change": float(rel), "guide": kind,
            "marginalized": marginal}
    return (bm,) + bm.draws_from_z(zs, marginal, draw_u=marginal, seed=seed + 1) + (diag,)


# --------------------------------------------------------------------------- MAP
def _map_runner(bm: BayesModel, maxiter: int, optimizer: str):
    """Compiled posterior-mode search for a model spec; data and start are its arguments."""
    return program(("map", bm.spec, maxiter, optimizer),
                   lambda: _build_map(bm.spec, maxiter, optimizer))


def _build_map(spec, maxiter: int, optimizer: str):
    # "bfgs": the project's BFGS, one call site of the objective (which, for a non-gaussian
    # family, holds a whole inner Laplace solve); "optax": optax L-BFGS with its zoom line
    # search, which traces the objective twice and compiles longer.
    search = minimize if optimizer == "bfgs" else minimize_optax
    optimize = jit(lambda x0, data: search(
        lambda x: -log_posterior(spec, x, data, marginal=True), x0, maxiter=maxiter))
    return AheadOfTime(optimize)


def run_map(problem, options: dict):
    """Posterior mode of the hyperparameters with the random effects integrated out by the
    Laplace approximation (as blme does for lme4), found by BFGS on the unconstrained scale;
    uncertainty from a normal approximation there (finite-difference Hessian of the exact
    gradient).  Random effects are the conditional modes at the posterior mode.
    ``options``: every option of :data:`jaxglmm.methods.MAP`."""
    bm = BayesModel(problem, options["priors"])
    optimizer = options["optimizer"]
    if optimizer not in MAP_OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {MAP_OPTIMIZERS}, got {optimizer!r}")
    optimize = _map_runner(bm, int(options["maxiter"]), optimizer)
    optimize.prepare(np.zeros(dimension(bm.blocks(marginal=True))), bm.data)
    x0 = _starts(bm, options["init"], 1, 0, jitter=False, marginal=True)[0]
    opt = optimize(x0, bm.data)
    x = np.asarray(opt.x)
    H = np.asarray(opt.hessian)
    evals = np.linalg.eigvalsh(H)
    cov = np.linalg.inv(H)
    cov = 0.5 * (cov + cov.T)
    draws = int(options["draws"])
    rng = np.random.default_rng(int(options["seed"]))
    if evals.min() > 0:    # Cholesky: draws change continuously with the mode and Hessian
        z = x + rng.standard_normal((draws, x.size)) @ np.linalg.cholesky(cov).T
    else:
        z = rng.multivariate_normal(x, cov, size=draws, method="eigh")
    # the mode first, then the draws
    sites, report = bm.draws_from_z(np.concatenate([x[None], z])[None], marginal=True)
    # conditional modes of u at the posterior mode, shared by every draw
    u = np.asarray(_map_u(bm)(report["theta"][0, 0], report["beta"][0, 0], report["phi"][0, 0],
                              bm.data["arrays"]))
    samples = {k: v[:, 1:] for k, v in sites.items()}
    samples["u"] = np.broadcast_to(u, (1, draws) + u.shape)
    diag = {"grad_max": float(jnp.max(jnp.abs(opt.grad))), "n_iter": int(opt.n_iter),
            "hessian_pd": bool(evals.min() > 0), "optimizer": optimizer}
    return bm, samples, None, diag


def _map_u(bm: BayesModel):
    """Compiled conditional mode of u given (theta, beta, phi) and the data, per spec."""
    spec = bm.spec
    return program(("map-u", spec), lambda: jit(lambda th, b, ph, arrays: GlmmModel(
        spec.structure, spec.family, arrays, spec.layout.n_phi).mode(th, b, ph)))


class BayesRun(NamedTuple):
    """A Bayesian fit's raw output: the model's pieces, the site draws, their reported values
    (or None: computed from the draws later), the sampler's record and the wall time."""

    bm: BayesModel
    samples: dict
    report: dict | None
    diag: dict
    seconds: float


def run_bayes(sampler, problem, options: dict) -> BayesRun:
    """Run ``sampler`` (:func:`run_nuts`, :func:`run_vi` or :func:`run_map`) on the problem
    with a method's settings (every option given a value) and time it."""
    start = time.perf_counter()
    bm, samples, report, diag = sampler(problem, options)
    return BayesRun(bm, samples, report, diag, time.perf_counter() - start)


__all__ = ["run_bayes", "run_nuts", "run_vi", "run_map", "BayesRun"]
