"""Power by simulation, simr's ``powerSim`` / ``powerCurve`` on the batch engine.

Each simulated response is fitted by the model and by the model without the tested term,
all of one size in two batches (:func:`jaxglmm.refit_many`).  A curve over the number of
levels of a grouping factor (simr's ``extend`` and ``along``) is fitted on one design with
the most levels: a smaller size gives the rows of the levels beyond it weight 0, which
leaves the likelihood of the rest exactly as a fit of those rows alone (tested), so every
size reuses one compiled program."""
from __future__ import annotations

import dataclasses
import time

from typing import TYPE_CHECKING

import numpy as np

from .._lazy import pandas as pd

from ..formula.parser import parse_formula
from ..many import refit_many
from ..methods import get_method
from ..model import Model
from .ddf import satterthwaite_many
from .power_curve import power_curve_class

if TYPE_CHECKING:
    from .power_curve import PowerCurve

TESTS = ("lrt", "wald", "satterthwaite")
WEIGHT = "_power_weight_"


def power(fit, term: str, effect: float | None = None, along: str | None = None, sizes=None,
          nsim: int = 1000, test: str = "lrt", alpha: float = 0.05, seed: int | None = None,
          progress: bool | None = None) -> PowerCurve:
    """Power to detect the fixed-effect ``term`` at level ``alpha``, by ``nsim``
    simulations from the fitted parameters (``effect`` sets the term's coefficient).

    ``test``: ``"lrt"`` (the likelihood ratio of the model with and without the term, by ML
    for an LMM, as simr's default through lme4's ``anova``) or ``"wald"`` (z = estimate /
    SE).  ``along`` and ``sizes``: the numbers of levels of a grouping column to
    simulate (levels are added by copying the existing ones' rows with new labels, as
    simr's ``extend``; fewer keep the first ones).  Returns one row per size: size, power,
    the Clopper-Pearson 95% interval (lower, upper) and nsim."""
    if getattr(fit, "draws", None) is not None or fit.loglik is None:
        raise ValueError(f"power simulates from likelihood fits; this is a {fit.method!r} fit")
    if not isinstance(test, str) or test.lower() not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    test = test.lower()
    if test == "satterthwaite" and not (fit.problem.family.exact_lmm
                                        and get_method(fit.method).exact_lmm_only):
        raise ValueError(f"test='satterthwaite' is for linear mixed models fitted by 'reml' "
                         f"or 'ml' (lmerTest's t tests); this is a {fit.problem.family.name} "
                         f"{fit.method!r} fit: use 'lrt' or 'wald'")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")
    nsim = int(nsim)
    if nsim < 1:
        raise ValueError(f"nsim must be a positive number of simulations, got {nsim}")
    spec = fit.spec
    if spec.dpars:
        raise ValueError("power does not handle distributional-parameter formulas yet")
    full_names = list(fit.fixef.index)
    null_formula = drop_term(spec.formula, term)
    data, sizes_out = _data(fit, along, sizes)
    opts = dict(spec.arguments)
    w0 = (np.ones(len(data)) if opts.get("weights") is None
          else np.asarray(data[opts["weights"]], float))
    opts["weights"] = WEIGHT
    build = lambda f, w: Model(f, data.assign(**{WEIGHT: w}), **opts)   # noqa: E731
    null = build(null_formula, w0)
    dropped = [n for n in full_names if n not in null.design.fixef_names]
    if not dropped:
        raise ValueError(f"{term!r} is not a fixed-effect term of {spec.formula!r} (its "
                         f"fixed effects are {full_names})")
    beta = fit.fixef.copy()
    if effect is not None:
        if len(dropped) != 1:
            raise ValueError(f"effect sets one coefficient; {term!r} has {len(dropped)}: "
                             f"{dropped}")
        beta[dropped[0]] = float(effect)
    start = time.perf_counter()
    full = build(spec.formula, w0)
    sim = _at(fit, Model(spec.formula, data, **spec.arguments), beta)
    Y = np.asarray(sim.simulate(n=nsim, seed=seed, re_form="~0"), float).T
    # the LRT and Wald tests by ML (as anova refits REML fits); Satterthwaite's t tests on
    # the fit's own criterion (lmerTest tests REML fits)
    method = fit.method if test == "satterthwaite" else \
        get_method(fit.method).ml_refit or fit.method
    from scipy.stats import chi2, norm, t as student_t  # loads when first used (import time)
    rows = []
    for size, mask in sizes_out:
        w = w0 * mask
        full_k = full if mask.all() else build(spec.formula, w)
        fits_full = refit_many(full_k, Y, method, progress=progress)
        if test == "lrt":
            null_k = null if mask.all() else build(null_formula, w)
            fits_null = refit_many(null_k, Y, method, progress=progress)
            stat = 2.0 * (fits_full.loglik.to_numpy() - fits_null.loglik.to_numpy())
            p = chi2.sf(np.maximum(stat, 0.0), len(dropped))
        else:
            if len(dropped) != 1:
                raise ValueError(f"test={test!r} tests one coefficient; {term!r} has "
                                 f"{len(dropped)}: use test='lrt'")
            est = fits_full.fixef[dropped[0]].to_numpy()
            if test == "wald":
                p = 2.0 * norm.sf(np.abs(est / fits_full.fixef_se[dropped[0]].to_numpy()))
            else:   # lmerTest's t test of the coefficient, Satterthwaite's df
                contrast = np.asarray([n == dropped[0] for n in full_names], float)
                var, df = satterthwaite_many(full_k, method, Y, fits_full.theta,
                                             fits_full.sigma.to_numpy(), contrast)
                with np.errstate(invalid="ignore", divide="ignore"):
                    p = 2.0 * student_t.sf(np.abs(est / np.sqrt(var)), df)
        ok = np.isfinite(p)
        hits, used = int(np.sum(p[ok] < alpha)), int(ok.sum())
        lo, hi = _clopper_pearson(hits, used)
        rows.append({"size": size, "power": hits / used if used else np.nan, "lower": lo,
                     "upper": hi, "nsim": used})
    out = power_curve_class()(pd.DataFrame(rows, columns=["size", "power", "lower", "upper", "nsim"]))
    out.attrs.update({"term": term, "test": test, "alpha": alpha, "along": along,
                      "tested": dropped, "seconds": time.perf_counter() - start})
    return out


def drop_term(formula: str, term: str) -> str:
    """The formula without the fixed-effect ``term`` (as written after expansion: ``x``,
    ``a:b``, ``log(x)``; the order of an interaction's parts does not matter)."""
    pf = parse_formula(formula)
    key = lambda parts: tuple(sorted(p.replace(" ", "") for p in parts))     # noqa: E731
    want = key(term.split(":"))
    kept = [":".join(a.display for a in t) for t in pf.fixed
            if key([a.display for a in t]) != want]
    if len(kept) == len(pf.fixed):
        names = [":".join(a.display for a in t) for t in pf.fixed]
        raise ValueError(f"{term!r} is not a fixed-effect term of {formula!r} (its terms are "
                         f"{names})")
    rhs = ["1" if pf.intercept else "0"] + kept
    rhs += [f"offset({o.source})" for o in pf.offsets]
    rhs += list(dict.fromkeys(r.source for r in pf.random))
    return f"{pf.response.text} ~ " + " + ".join(rhs)


def _at(fit, model, beta):
    """The fit's parameters on another model of the same formula (to simulate from)."""
    return dataclasses.replace(fit, problem=model.problem, spec=model.spec,
                               fixef=beta.rename("fixef"), b=(), b_factors=())


def _data(fit, along, sizes):
    """The data to simulate (the original, or extended along a grouping column to the
    largest size) and per size its row mask."""
    data = fit.spec.data
    if along is None:
        if sizes is not None:
            raise ValueError("sizes needs along=, the grouping column whose number of levels "
                             "they set")
        return data, [(int(fit.problem.design.nobs), np.ones(len(data), bool))]
    if along not in data.columns:
        raise ValueError(f"along={along!r} is not a column of the model's data")
    levels = pd.unique(data[along].dropna())
    sizes = [len(levels)] if sizes is None else [int(k) for k in np.atleast_1d(sizes)]
    if min(sizes) < 1:
        raise ValueError(f"sizes must be positive numbers of {along!r} levels, got {sizes}")
    top = max(sizes)
    copies = []
    for r in range(-(-top // len(levels))):
        take = levels[:min(len(levels), top - r * len(levels))]
        part = data[data[along].isin(take)].copy()
        if r:
            part[along] = part[along].astype(str) + f".{r + 1}"
        copies.append(part)
    ext = pd.concat(copies, ignore_index=True)
    order = pd.unique(ext[along])
    rank = {lv: k for k, lv in enumerate(order)}
    pos = ext[along].map(rank).to_numpy()
    return ext, [(k, pos < k) for k in sizes]


def _clopper_pearson(hits: int, n: int, level: float = 0.95) -> tuple[float, float]:
    if n == 0:
        return np.nan, np.nan
    from scipy.stats import beta as beta_dist  # loads when first used (import time)
    a = (1 - level) / 2
    lo = beta_dist.ppf(a, hits, n - hits + 1) if hits > 0 else 0.0
    hi = beta_dist.ppf(1 - a, hits + 1, n - hits) if hits < n else 1.0
    return float(lo), float(hi)
