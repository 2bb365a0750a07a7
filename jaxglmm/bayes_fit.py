"""NUTS, variational inference and MAP on :class:`jaxglmm.bayes.BayesModel`.

Each returns draws of the model's sites (chain, draw, ...); :func:`posterior_result` turns
them into the same :class:`~jaxglmm.result.FitResult` accessors as a likelihood fit (posterior
means for fixef/varcorr/ranef, posterior SDs for fixef_se) plus ``fit.posterior`` (ArviZ
InferenceData) and ``fit.posterior_summary``.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import SVI, Trace_ELBO, init_to_value
from numpyro.infer.hmc import hmc
from numpyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal
from numpyro.optim import optax_to_numpyro

from functools import partial

from .bayes import BayesModel, numpyro_model

NUTS_OPTIONS = {"chains", "warmup", "draws", "seed", "target_accept", "max_tree_depth",
                "chain_method", "progress", "priors", "dense_mass"}
VI_OPTIONS = {"guide", "steps", "learning_rate", "draws", "seed", "rank", "progress", "priors"}
MAP_OPTIONS = {"draws", "seed", "priors", "maxiter"}


def _start(model, bm: BayesModel):
    """Start at the maximum-likelihood (Laplace/REML-free ML) fit."""
    ml = model.fit("ml" if model._exact_gaussian() else "laplace")
    return bm.init_values(ml)


# Compiled NUTS runs, by model spec and sampler settings.  The data are the runner's
# arguments, so a same-shape dataset reuses one compiled program, with chains in parallel
# across devices (pmap) or vectorized on one (vmap).  (numpyro's MCMC recompiles parallel
# chains on every run: its jit_model_args does not cover them.)
_RUNNERS: dict = {}


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None, None
    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc="NUTS (chain 1)", leave=False)

    def tick(chain, i):
        if int(chain) == 0:
            bar.n = int(i) + 1
            bar.refresh()
    return bar, tick


def _density_generators(bm: BayesModel, marginal: bool = False):
    """numpyro's potential and postprocess functions as generators of the data.

    The site transforms depend only on shapes, so they are read from an abstract trace
    (``jax.eval_shape``): numpyro's ``initialize_model`` runs the model eagerly and checks
    initial values and gradients, compiling op by op (about 6 s on sleepstudy)."""
    from numpyro.handlers import seed, substitute
    from numpyro.infer import init_to_uniform
    from numpyro.infer.util import _get_model_transforms, get_potential_fn
    model = partial(numpyro_model, bm.spec, marginal=marginal)
    found = {}

    def trace(data):
        traced = substitute(seed(model, rng_seed=0), substitute_fn=init_to_uniform)
        found["t"] = _get_model_transforms(traced, (data,), {})
        return jnp.zeros(())

    jax.eval_shape(trace, bm.data)
    inv_transforms, replay_model, _, _ = found["t"]
    potential_gen, post_gen = get_potential_fn(model, inv_transforms, replay_model=replay_model,
                                               dynamic_args=True, model_args=(bm.data,))
    return potential_gen, post_gen, inv_transforms


def _runner(bm: BayesModel, settings: tuple, chains: int, parallel: bool):
    key = (bm.spec, settings, chains, parallel)
    if key in _RUNNERS:
        return _RUNNERS[key]
    warmup, draws, accept, depth, dense, progress = settings
    potential_gen, post_gen, transforms = _density_generators(bm)
    init_kernel, sample_kernel = hmc(potential_fn_gen=potential_gen, algo="NUTS")
    total = warmup + draws
    every = max(total // 100, 1)
    bar, tick = _progress_bar(total, progress)

    def one_chain(chain, rng_key, z0, data):
        state = init_kernel(z0, num_warmup=warmup, target_accept_prob=accept,
                            max_tree_depth=depth, dense_mass=dense, model_args=(data,),
                            rng_key=rng_key)

        def step(state, i):
            state = sample_kernel(state, model_args=(data,))
            if tick is not None:
                jax.lax.cond(i % every == 0, lambda: jax.debug.callback(tick, chain, i),
                             lambda: None)
            return state, (state.z, state.diverging, state.num_steps)

        _, (zs, div, steps) = jax.lax.scan(step, state, jnp.arange(total))
        return jax.tree.map(lambda v: v[warmup:], zs), div[warmup:], steps[warmup:]

    axes = (0, 0, 0, None)
    chains_fn = jax.pmap(one_chain, in_axes=axes) if parallel else \
        jax.jit(jax.vmap(one_chain, in_axes=axes))
    # unconstrained draws -> site values, compiled apart from the sampler (inside it, the
    # model re-traced per draw made the sampler's compile several times slower)
    constrain = jax.jit(lambda zs, data: jax.vmap(jax.vmap(post_gen(data)))(zs))

    def fn(chain_ids, keys, inits, data):
        zs, div, steps = chains_fn(chain_ids, keys, inits, data)
        return constrain(zs, data), div, steps

    _RUNNERS[key] = (fn, bar, transforms)
    return fn, bar, transforms


def _chain_inits(transforms: dict, values: dict, chains: int, seed: int) -> dict:
    """Each chain starts near the maximum-likelihood fit, jittered on the unconstrained scale
    so that R-hat compares chains that started apart."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, t in transforms.items():
        z = np.asarray(t.inv(jnp.asarray(values[name])))
        out[name] = jnp.asarray(z[None] + 0.1 * rng.standard_normal((chains,) + z.shape))
    return out


def run_nuts(model, options: dict):
    bm = BayesModel(model, options.get("priors"))
    chains = int(options.get("chains", 4))
    method = options.get("chain_method") or (
        "parallel" if len(jax.devices()) >= chains > 1 else "vectorized")
    if method not in ("parallel", "vectorized"):
        raise ValueError(f"chain_method must be 'parallel' or 'vectorized', got {method!r}")
    if method == "parallel" and len(jax.devices()) < chains:
        raise ValueError(f"chain_method 'parallel' needs {chains} devices, JAX sees "
                         f"{len(jax.devices())}; call numpyro.set_host_device_count({chains}) "
                         "before JAX starts, or use 'vectorized'")
    settings = (int(options.get("warmup", 1000)), int(options.get("draws", 1000)),
                float(options.get("target_accept", 0.8)), int(options.get("max_tree_depth", 10)),
                bool(options.get("dense_mass", False)), bool(options.get("progress", True)))
    start = _start(model, bm)
    fn, bar, transforms = _runner(bm, settings, chains, method == "parallel")
    seed = int(options.get("seed", 0))
    inits = _chain_inits(transforms, start, chains, seed)
    keys = jax.random.split(jax.random.PRNGKey(seed), chains)
    if bar is not None:
        bar.reset()
    samples, div, steps = jax.device_get(fn(jnp.arange(chains), keys, inits, bm.data))
    if bar is not None:
        bar.n = bar.total
        bar.refresh()
    steps = np.asarray(steps)
    diag = {"divergences": int(np.sum(div)),
            "max_tree_depth_hits": int(np.sum(steps >= 2 ** settings[3] - 1)),
            "mean_tree_depth": float(np.mean(np.log2(steps + 1))),
            "chain_method": method}
    samples = {k: v for k, v in samples.items() if not k.endswith(("_prior", "log_density"))}
    return bm, samples, diag


def run_vi(model, options: dict):
    bm = BayesModel(model, options.get("priors"))
    kind = options.get("guide", "meanfield")
    init = init_to_value(values=_start(model, bm))
    if kind == "meanfield":
        guide = AutoNormal(bm.numpyro_model, init_loc_fn=init, init_scale=0.01)
    elif kind == "lowrank":
        guide = AutoLowRankMultivariateNormal(bm.numpyro_model, init_loc_fn=init,
                                              rank=options.get("rank"), init_scale=0.01)
    else:
        raise ValueError(f"guide must be 'meanfield' or 'lowrank', got {kind!r}")
    opt = optax_to_numpyro(optax.adam(float(options.get("learning_rate", 0.01))))
    svi = SVI(bm.numpyro_model, guide, opt, Trace_ELBO())
    steps = int(options.get("steps", 20000))
    key = jax.random.PRNGKey(int(options.get("seed", 0)))
    res = svi.run(key, steps, progress_bar=bool(options.get("progress", True)))
    draws = int(options.get("draws", 1000))
    post = guide.sample_posterior(jax.random.fold_in(key, 1), res.params, sample_shape=(1, draws))
    samples = {k: v for k, v in post.items() if not k.endswith(("_prior", "log_density"))}
    elbo = -np.asarray(res.losses)
    window = max(steps // 10, 10)
    late, early = elbo[-window:].mean(), elbo[-2 * window:-window].mean()
    rel = abs(late - early) / max(abs(late), 1.0)
    diag = {"elbo_trace": elbo, "elbo_relative_change": float(rel), "guide": kind,
            "converged": bool(rel < 1e-3)}
    return bm, samples, diag


_MAP_RUNNERS: dict = {}


def _map_runner(bm: BayesModel, maxiter: int):
    """Compiled posterior-mode search for a model spec; data and start are its arguments."""
    key = (bm.spec, maxiter)
    if key in _MAP_RUNNERS:
        return _MAP_RUNNERS[key]
    from .optimize import minimize
    potential_gen, post_gen, transforms = _density_generators(bm, marginal=True)
    names = sorted(transforms)
    shapes = {}

    def unravel(x):
        out, pos = {}, 0
        for n in names:
            size = int(np.prod(shapes[n]))
            out[n] = x[pos:pos + size].reshape(shapes[n])
            pos += size
        return out

    # The project's BFGS (one call site of the objective, which holds a whole inner Laplace
    # solve) compiles in a fraction of optax L-BFGS's time with its zoom line search.
    optimize = jax.jit(lambda x0, data: minimize(lambda x: potential_gen(data)(unravel(x)),
                                                 x0, maxiter=maxiter))
    constrain = jax.jit(lambda zs, data: jax.vmap(lambda z: post_gen(data)(unravel(z)))(zs))
    _MAP_RUNNERS[key] = (optimize, constrain, transforms, names, shapes)
    return _MAP_RUNNERS[key]


def run_map(model, options: dict):
    """Posterior mode of the hyperparameters with the random effects integrated out by the
    Laplace approximation (as blme does for lme4), found by BFGS on the unconstrained scale;
    uncertainty from a normal approximation there (finite-difference Hessian of the exact
    gradient).  Random effects are the conditional modes at the posterior mode."""
    bm = BayesModel(model, options.get("priors"))
    optimize, constrain, transforms, names, shapes = _map_runner(bm, int(options.get("maxiter", 500)))
    start = _start(model, bm)
    z0 = {n: np.asarray(transforms[n].inv(jnp.asarray(start[n]))) for n in names}
    shapes.update({n: z0[n].shape for n in names})
    x0 = jnp.concatenate([jnp.ravel(jnp.asarray(z0[n])) for n in names])
    opt = optimize(x0, bm.data)
    x = opt.x
    H = np.asarray(opt.hessian)
    evals = np.linalg.eigvalsh(H)
    cov = np.linalg.inv(H)
    cov = 0.5 * (cov + cov.T)
    draws = int(options.get("draws", 1000))
    z = np.random.default_rng(int(options.get("seed", 0))).multivariate_normal(
        np.asarray(x), cov, size=draws, method="eigh")
    post = constrain(jnp.asarray(z), bm.data)
    mode = constrain(x[None], bm.data)
    # conditional modes of u at the posterior mode, shared by every draw
    d = bm.transform_draws({k: v[None] for k, v in mode.items() if k in post})
    u = jax.jit(bm.laplace().mode)(d["theta"][0, 0], d["beta"][0, 0], d["phi"][0, 0])
    samples = {k: v[None] for k, v in post.items()
               if not k.endswith(("_prior", "log_marginal"))}
    samples["u"] = jnp.broadcast_to(u, (1, draws) + u.shape)
    diag = {"grad_max": float(jnp.max(jnp.abs(opt.grad))), "n_iter": int(opt.n_iter),
            "hessian_pd": bool(evals.min() > 0)}
    return bm, samples, diag


RUNNERS = {"nuts": (run_nuts, NUTS_OPTIONS), "vi": (run_vi, VI_OPTIONS), "map": (run_map, MAP_OPTIONS)}


def check_options(method: str, options: dict) -> None:
    allowed = RUNNERS[method][1]
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"unknown option(s) for method {method!r}: {sorted(unknown)}; "
                         f"allowed: {sorted(allowed)}")


def fit_bayes(model, method: str, options: dict):
    from .posterior import posterior_result
    check_options(method, options)
    start = time.perf_counter()
    bm, samples, diag = RUNNERS[method][0](model, options)
    return posterior_result(model, bm, method, options, samples, diag,
                            time.perf_counter() - start)


__all__ = ["fit_bayes", "check_options"]
