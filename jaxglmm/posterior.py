"""Draws -> the result record: named posterior draws, diagnostics and the usual accessors."""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import diagnostics as dg
from .priors import describe
from .result import FitResult

RHAT_MAX = 1.01


def named_draws(model, bm, samples, report=None) -> tuple[dict, dict]:
    """Scalar draws by name (chain, draw) and random-effect draws (chain, draw, level, q);
    ``report``: :meth:`BayesModel.transform_draws` of the samples, where already known."""
    d = bm.transform_draws(samples) if report is None else report
    design, s = model.design, model.structure
    out = {}
    for j, name in enumerate(design.fixef_names):
        out[f"b_{name}"] = d["beta"][..., j]
    for k, t in enumerate(bm.layout.terms):
        sd = np.asarray(samples[f"sd_{k}"])
        for i, name in enumerate(t.names):
            out[f"sd_{t.label}__{name}"] = sd[..., i]
        if f"L_{k}" in samples:
            L = np.asarray(samples[f"L_{k}"])
            R = np.einsum("...ij,...kj->...ik", L, L)
            for i in range(t.q):
                for j2 in range(i + 1, t.q):
                    out[f"cor_{t.label}__{t.names[i]}__{t.names[j2]}"] = R[..., j2, i]
    for name, v in d["natural"].items():
        if v.ndim == 2:
            out[name] = v
        else:
            for i in range(v.shape[-1]):
                label = "threshold" if name == "thresholds" else name
                out[f"{label}[{i + 1}]"] = v[..., i]
    re = {}
    for f, b in zip(s.factors, d["b"]):
        for t in f.terms:
            re[(t.label, tuple(t.names))] = b[..., t.col0:t.col0 + t.q]
    return out, re


def summarize(draws: dict) -> pd.DataFrame:
    """One row per quantity: mean, sd, 95% interval, R-hat (several chains), bulk and tail
    ESS, MCSE of the mean."""
    rows = {}
    n_chains = next(iter(draws.values())).shape[0]
    for name, v in draws.items():
        v = np.asarray(v, float)
        flat = v.reshape(-1)
        rows[name] = {"mean": flat.mean(), "sd": flat.std(ddof=1),
                      "q2.5": np.quantile(flat, 0.025), "q97.5": np.quantile(flat, 0.975),
                      "rhat": dg.rhat(v) if n_chains > 1 else np.nan,
                      "ess_bulk": dg.ess_bulk(v), "ess_tail": dg.ess_tail(v),
                      "mcse_mean": dg.mcse_mean(v)}
    return pd.DataFrame(rows).T


def posterior_result(model, bm, method, options, samples, diag, seconds,
                     report=None) -> FitResult:
    draws, re = named_draws(model, bm, samples, report)
    summary = summarize(draws)
    design, s = model.design, model.structure
    names = list(design.fixef_names)
    beta = np.stack([draws[f"b_{n}"].reshape(-1) for n in names], axis=1)
    fixef = pd.Series(beta.mean(0), index=names, name="fixef")
    se = pd.Series(beta.std(0, ddof=1), index=names, name="fixef_se")
    vcov = pd.DataFrame(np.atleast_2d(np.cov(beta, rowvar=False)), index=names, columns=names)
    rows = []
    for t in bm.layout.terms:
        for n in t.names:
            v = draws[f"sd_{t.label}__{n}"]
            rows.append((t.label, n, None, float(np.mean(v ** 2)), float(np.mean(v))))
        for i in range(t.q):
            for j in range(i + 1, t.q):
                key = f"cor_{t.label}__{t.names[i]}__{t.names[j]}"
                if key in draws:
                    rows.append((t.label, t.names[i], t.names[j], np.nan, float(np.mean(draws[key]))))
    sigma = float(np.mean(draws["sigma"])) if "sigma" in draws else None
    if sigma is not None:
        rows.append(("Residual", None, None, float(np.mean(draws["sigma"] ** 2)), sigma))
    varcorr = pd.DataFrame(rows, columns=["group", "var1", "var2", "vcov", "sd_or_cor"])
    fparams = {}
    for name in bm.family_param_names:
        if name == "sigma":
            continue
        if name in draws:
            fparams[name] = np.asarray(np.mean(draws[name]))
        else:
            keys = [k for k in draws if k.startswith(("threshold[" if name == "thresholds" else f"{name}["))]
            fparams[name] = np.array([np.mean(draws[k]) for k in keys])
    ranef, b_terms = {}, []
    for t in design.terms:
        b = re[(t.label, tuple(t.names))]
        mean, sd = b.mean(axis=(0, 1)), b.reshape((-1,) + b.shape[2:]).std(0, ddof=1)
        b_terms.append(mean)
        frame = ranef.setdefault(t.group, pd.DataFrame(index=pd.Index(t.levels, name="level")))
        for k, n in enumerate(t.names):
            frame[n] = mean[:, k]
            frame[f"{n}_sd"] = sd[:, k]
    messages = list(design.messages)
    if method == "nuts":
        worst = float(np.nanmax(summary["rhat"]))
        converged = worst <= RHAT_MAX and diag["divergences"] == 0
        if worst > RHAT_MAX:
            messages.append(f"R-hat up to {worst:.3f} (> {RHAT_MAX}): the chains have not mixed; "
                            "run longer warmup/draws")
        if diag["divergences"]:
            messages.append(f"{diag['divergences']} divergent transitions after warmup: raise "
                            "target_accept (e.g. 0.95) or reparameterize")
        if diag["max_tree_depth_hits"]:
            messages.append(f"{diag['max_tree_depth_hits']} transitions hit the maximum tree depth")
    elif method == "vi":
        converged = diag["converged"]
        if not converged:
            messages.append(f"ELBO still changing (relative change {diag['elbo_relative_change']:.2e} "
                            "over the last tenth of the steps): run more steps")
    else:
        converged = diag["grad_max"] < 1e-3 and diag["hessian_pd"]
        if not converged:
            messages.append("posterior mode not reached or Hessian not positive definite "
                            f"(max |grad| {diag['grad_max']:.2e})")
    n_params = len(names) + s.n_theta + int(np.size(model._phi0()))
    return FitResult(model=model, method=method, fixef=fixef, fixef_se=se, vcov=vcov,
                     varcorr=varcorr, sigma=sigma, family_params=fparams, loglik=None,
                     df=n_params, ranef=ranef, converged=bool(converged), singular=False,
                     messages=tuple(messages), seconds=seconds, theta=np.full(s.n_theta, np.nan),
                     n_iter=0, b=tuple(b_terms), options=dict(options),
                     optinfo={}, draws=draws, posterior_summary=summary,
                     priors=tuple(describe(bm.priors)), diagnostics=diag)
