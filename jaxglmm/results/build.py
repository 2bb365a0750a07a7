"""The one result builder: a likelihood fit's :class:`~jaxglmm.fit.likelihood.RawFit`, or a
Bayesian fit's :class:`~jaxglmm.bayes.drivers.BayesRun`, becomes a :class:`FitResult`.

Each kind of fit reduces to the same estimates (fixed effects with their covariance, the
variance components, sigma and family parameters, per grouping factor the random effects
and their conditional or posterior SDs, and a convergence verdict from
:mod:`jaxglmm.fit.convergence`); :func:`_assemble` turns those into the record, the same way
for both.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from .._lazy import pandas as pd

from ..bayes.posterior import named_draws, summarize
from ..bayes.priors import describe
from ..core.problem import Problem
from ..core.restructure import canonical_theta
from ..fit.convergence import Verdict, judge
from ..fit.likelihood import RawFit, uses_lmm
from ..methods import get_method
from ..core.lazy import Deferred
from .result import FitResult
from .spec import ModelSpec
from .varcorr import varcorr_frame

if TYPE_CHECKING:       # numpyro loads with the drivers, on a Bayesian fit's first run
    from ..bayes.drivers import BayesRun


def likelihood_result(spec: ModelSpec, problem: Problem, method: str, options: dict, raw: RawFit,
                      seconds: float) -> FitResult:
    """The result of a likelihood fit (arrays of one dataset, on the host or the device:
    all come over in one transfer).  Its pandas objects are built when first read."""
    if any(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(raw)):
        raw = jax.device_get(raw)
    d, s, fam = problem.design, problem.structure, problem.family
    lmm = uses_lmm(problem, get_method(method))
    diagonal = s.theta_diagonal()
    theta = np.array(raw.theta, float)
    if (theta[diagonal] < 0).any():         # else it is canonical already
        # scalar terms only: each entry is its column's diagonal, flipped alone
        theta = np.where(theta < 0, -theta, theta) if diagonal.all() else \
            canonical_theta(s, theta)
    if lmm:
        sigma, fparams, fparams_se = float(raw.sigma), {}, {}
    else:
        fparams = _natural_params(fam, raw.family_params)
        sigma = float(fparams.pop(fam.residual)) if fam.residual in fparams else None
        fparams_se = _family_params_se(fam, raw, s.n_theta + d.n_fixef)
    verdict = judge(int(raw.status), raw.grad, raw.hessian, theta, diagonal, int(raw.n_iter))
    optinfo = {"x": np.asarray(raw.x), "grad": np.asarray(raw.grad),
               "hessian": np.asarray(raw.hessian), "n_iter": np.asarray(raw.n_iter),
               "status": np.asarray(raw.status), "objective0": np.asarray(raw.objective0),
               "u": np.asarray(raw.u), "objective": np.asarray(raw.deviance)}
    return _assemble(spec, problem, method, options, seconds, verdict,
                     fixef=np.asarray(raw.beta, float), vcov=np.asarray(raw.vcov),
                     varcorr=Deferred(_likelihood_varcorr, s, theta, sigma, lmm), sigma=sigma,
                     family_params=fparams, family_params_se=fparams_se,
                     loglik=float(raw.loglik), theta=theta, n_iter=int(raw.n_iter),
                     b=[np.asarray(x) for x in raw.b], b_sd=Deferred(_conditional_sds, raw.b_cov),
                     optinfo=optinfo)


def _likelihood_varcorr(s, theta: np.ndarray, sigma: float | None, lmm: bool) -> pd.DataFrame:
    """An LMM's Lambda is relative to sigma (lme4).  Otherwise Lambda is absolute and a
    gaussian family's sigma (non-identity link) is one of the family parameters."""
    vc = varcorr_frame(s, theta, sigma if lmm else None)
    if not lmm and sigma is not None:
        vc.loc[len(vc)] = ("Residual", None, None, sigma ** 2, sigma)
    return vc


def _conditional_sds(b_cov) -> list:
    """Per factor the random effects' conditional SDs (levels, q), from their covariances."""
    return [np.sqrt(np.clip(np.diagonal(np.asarray(c), axis1=1, axis2=2), 0, None))
            for c in b_cov]


def posterior_result(spec: ModelSpec, problem: Problem, method: str, options: dict,
                     run: BayesRun) -> FitResult:
    """The result of a Bayesian fit: posterior means and SDs in the usual accessors."""
    bm, diag = run.bm, run.diag
    draws, b_draws = named_draws(bm, run.samples, run.report)
    summary = summarize(draws)
    s = problem.structure
    names = list(problem.design.fixef_names)
    beta = np.stack([draws[f"b_{n}"].reshape(-1) for n in names], axis=1)
    vcov = np.atleast_2d(np.cov(beta, rowvar=False))
    sigma = float(np.mean(draws["sigma"])) if "sigma" in draws else None
    fparams = {}
    for name in bm.family_param_names:
        if name == problem.family.residual:
            continue
        if name in draws:
            fparams[name] = np.asarray(np.mean(draws[name]))
        else:
            prefix = "threshold[" if name == "thresholds" else f"{name}["
            fparams[name] = np.array([np.mean(draws[k]) for k in draws if k.startswith(prefix)])
    b = [x.mean(axis=(0, 1)) for x in b_draws]
    verdict = get_method(method).judge(float(np.nanmax(summary["rhat"]))
                                       if np.any(np.isfinite(summary["rhat"])) else np.nan, diag)
    return _assemble(spec, problem, method, options, run.seconds, verdict,
                     fixef=beta.mean(0), vcov=vcov,
                     varcorr=Deferred(_posterior_varcorr, bm, draws, sigma),
                     sigma=sigma, family_params=fparams, family_params_se={}, loglik=None,
                     theta=np.full(s.n_theta, np.nan), n_iter=0, b=b,
                     b_sd=Deferred(_posterior_sds, b_draws), optinfo={},
                     draws=draws, posterior_summary=summary, priors=tuple(describe(bm.priors)),
                     diagnostics=diag, fixef_se=beta.std(0, ddof=1))


def _assemble(spec, problem: Problem, method: str, options: dict, seconds: float,
              verdict: Verdict, *, fixef, vcov, b, b_sd, fixef_se=None, **fields) -> FitResult:
    """The record from numpy estimates (``vcov`` a matrix; ``b`` per grouping factor its
    (levels, q) effects, ``b_sd`` a :class:`Deferred` of their SDs), its pandas fields
    deferred to their first read."""
    names = list(problem.design.fixef_names)
    blocks = _term_blocks(problem)
    return FitResult(problem=problem, spec=spec, method=method,
                     fixef=Deferred(pd.Series, fixef, index=names, name="fixef"),
                     fixef_se=Deferred(_standard_errors, names, vcov, fixef_se),
                     fixef_vcov=Deferred(pd.DataFrame, vcov, index=names, columns=names),
                     df=problem.n_params, ranef=Deferred(_ranef_frames, problem, blocks, b, b_sd),
                     converged=verdict.converged, singular=verdict.singular,
                     messages=tuple(problem.design.messages) + verdict.messages,
                     seconds=seconds, b=tuple(b[k][:, cols] for k, cols in blocks),
                     b_factors=tuple(b), options=dict(options), **fields)


def _standard_errors(names: list, vcov: np.ndarray, se) -> pd.Series:
    """The fixed effects' standard errors: ``se``, or those of ``vcov`` where None."""
    return pd.Series(np.sqrt(np.diag(vcov)) if se is None else se, index=names,
                     name="fixef_se")


def _term_blocks(problem: Problem) -> list:
    """Per design term, the grouping factor it belongs to and its columns there."""
    by_label = {}
    for k, f in enumerate(problem.structure.factors):
        for t in f.terms:
            by_label[(t.label, t.names)] = (k, slice(t.col0, t.col0 + t.q))
    return [by_label[(t.label, tuple(t.names))] for t in problem.design.terms]


def _ranef_frames(problem: Problem, blocks: list, b, b_sd: Deferred) -> dict:
    """Per group a DataFrame of the effects with their SDs (``<term>_sd``), from per-factor
    arrays and the term's blocks of them (:func:`_term_blocks`)."""
    sd = b_sd()
    frames = {}
    for t, (k, cols) in zip(problem.design.terms, blocks):
        bt, sdt = b[k][:, cols], sd[k][:, cols]
        frame = frames.setdefault(t.group, pd.DataFrame(index=pd.Index(t.levels, name="level")))
        for j, name in enumerate(t.names):
            frame[name] = bt[:, j]
            frame[f"{name}_sd"] = sdt[:, j]
    return frames


def _posterior_varcorr(bm, draws: dict, sigma) -> pd.DataFrame:
    """Posterior means in lme4's VarCorr layout: SDs (with the mean of the variance) and
    correlations, then the residual."""
    rows = []
    for t in bm.layout.terms:
        for n in t.names:
            v = draws[f"sd_{t.param_group}__{n}"]
            rows.append((t.label, n, None, float(np.mean(v ** 2)), float(np.mean(v))))
        for i in range(t.q):
            for j in range(i + 1, t.q):
                key = f"cor_{t.param_group}__{t.names[i]}__{t.names[j]}"
                if key in draws:
                    rows.append((t.label, t.names[i], t.names[j], np.nan, float(np.mean(draws[key]))))
    if sigma is not None:
        rows.append(("Residual", None, None, float(np.mean(draws["sigma"] ** 2)), sigma))
    return pd.DataFrame(rows, columns=["group", "var1", "var2", "vcov", "sd_or_cor"])


def _posterior_sds(b_draws) -> list:
    """Per factor the random effects' posterior SDs, from their (chain, draw, ...) draws."""
    return [x.reshape((-1,) + x.shape[2:]).std(0, ddof=1) for x in b_draws]


def _natural_params(fam, phi) -> dict:
    """The family's natural parameters of ``phi`` (on the host); those of a family without
    free parameters are a constant of the family, kept."""
    if np.shape(phi)[0] == 0:
        return {k: v.copy() for k, v in _fixed_natural_params(fam.natural_params)}
    return {k: np.asarray(v) for k, v in fam.natural_params(jnp.asarray(phi)).items()}


@functools.lru_cache(maxsize=64)
def _fixed_natural_params(natural_params) -> tuple:
    # a NumPy argument: an eager jnp.zeros compiles two small programs, 90 ms in a new process
    # (cbpp's first fit in a second process: 0.2 s, of which this was 0.09)
    return tuple((k, np.asarray(v)) for k, v in natural_params(np.zeros(0)).items())


def _family_params_se(fam, raw: RawFit, start: int) -> dict:
    """Standard errors of the natural family parameters (thresholds, shape, ...): the delta
    method on the inverse Hessian of the deviance in the outer vector (theta, beta, phi), as
    ordinal::clmm and glmmTMB report them.  NaN where that Hessian is not positive definite.
    A residual SD reported as the fit's ``sigma`` gets none here."""
    if np.shape(raw.family_params)[0] == 0:
        return {}
    phi = jnp.asarray(raw.family_params)
    H = np.asarray(raw.hessian, float)
    values = fam.natural_params(phi)
    if not (np.all(np.isfinite(H)) and np.linalg.eigvalsh(H).min() > 0):
        out = {k: np.full(np.shape(v), np.nan) for k, v in values.items()}
    else:
        cov = 2.0 * np.linalg.inv(H)[start:, start:]
        J = np.asarray(jax.jacfwd(lambda z: jnp.concatenate(
            [jnp.ravel(v) for v in fam.natural_params(z).values()]))(phi))
        se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", J, cov, J), 0.0))
        out, pos = {}, 0
        for k, v in values.items():
            size = int(np.size(v))
            out[k] = se[pos:pos + size].reshape(np.shape(v)) if np.ndim(v) else float(se[pos])
            pos += size
    if fam.residual is not None:
        out.pop(fam.residual, None)
    return out
