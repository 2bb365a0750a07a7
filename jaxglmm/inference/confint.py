"""Confidence intervals, lme4's ``confint.merMod``: Wald and parametric-bootstrap
percentile intervals.  Rows are named as brms names parameters (:mod:`.params`)."""
from __future__ import annotations

import warnings

import numpy as np
from .._lazy import pandas as pd

from .bootstrap import bootstrap
from .params import of_fit, select
from .profile import profile_intervals

METHODS = ("wald", "profile", "bootstrap")


def confint(fit, method: str = "wald", level: float = 0.95, parm=None, **options) -> pd.DataFrame:
    """Intervals with columns ``lower`` and ``upper``, one row per parameter.

    * ``"wald"``: ``estimate -/+ z se`` for the fixed effects; the variance parameters get
      NaN, as lme4's (their sampling distribution is far from normal);
    * ``"bootstrap"``: percentile intervals of :meth:`FitResult.bootstrap` (``n``,
      ``seed``, ``use_re`` and ``progress`` pass through; ``n`` defaults to 1000); rows
      whose refit did not converge are left out;
    * ``"profile"``: profile-likelihood intervals, as lme4's (see
      :mod:`jaxglmm.inference.profile`; a REML fit is profiled by its ML refit, as lme4
      does); ``attrs["profiles"]`` holds each parameter's (values, zeta) and
      ``attrs["estimates"]`` the estimates the intervals are about (the ML refit's for a
      REML fit).  An SD's lower end is 0 where its profile at 0 stays above the cut-off, a
      correlation's end +-1 likewise; an end the profile does not reach is NaN, with a
      warning.

    ``parm``: a list of row names, or lme4's ``"beta_"`` (the fixed effects) or
    ``"theta_"`` (the variance parameters)."""
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    method = method.lower()
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise ValueError(f"level must be a probability between 0 and 1, got {level!r}")
    if getattr(fit, "draws", None) is not None:
        raise ValueError(f"confint is for likelihood fits; for this {fit.method!r} fit use "
                         "fit.posterior_summary (its q2.5 and q97.5 columns)")
    unknown = set(options) - ({"n", "seed", "use_re", "progress"} if method == "bootstrap"
                              else set())
    if unknown:
        raise ValueError(f"unknown option(s) for method {method!r}: {sorted(unknown)}")
    est = of_fit(fit)
    fixed = list(fit.fixef.index)
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    if method == "wald":
        from scipy.stats import norm  # loads when first used (import time)
        z = norm.ppf(hi)
        se = fit.fixef_se.reindex(est.index).to_numpy(float)
        lower = np.where(est.index.isin(fixed), est.to_numpy() - z * se, np.nan)
        upper = np.where(est.index.isin(fixed), est.to_numpy() + z * se, np.nan)
        out = pd.DataFrame({"lower": lower, "upper": upper}, index=est.index)
    elif method == "profile":
        wanted = select(parm, list(est.index), fixed)
        limits, curves, estimates = profile_intervals(fit, level, wanted)
        missing = [n for n in wanted if n not in limits]
        if missing:
            warnings.warn(f"not profiled (the family's own parameters): {missing}; their "
                          "rows are NaN", UserWarning, stacklevel=2)
        out = pd.DataFrame([limits.get(n, (np.nan, np.nan)) for n in est.index],
                           index=est.index, columns=["lower", "upper"])
        out.attrs["profiles"] = curves
        out.attrs["estimates"] = pd.Series(estimates)
    else:
        reps = bootstrap(fit, **{"n": 1000, **options})
        ok = reps[reps["converged"]].drop(columns="converged")
        out = pd.DataFrame({"lower": ok.quantile(lo), "upper": ok.quantile(hi)})
        out.attrs["n"] = len(ok)
    return out.loc[select(parm, list(out.index), fixed)]

