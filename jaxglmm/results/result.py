"""The fitted result: an immutable record with pandas accessors, prediction and simulation."""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..core.predictor import fixed_predictor, random_predictor
from ..core.resystem import term_covariances
from .summary import Summary


@dataclass(frozen=True)
class FitResult:
    """A fitted mixed model.  Nothing here mutates; accessors return pandas objects.

    Attributes
    ----------
    fixef, fixef_se: Series of fixed effects and their standard errors (posterior means and
        SDs for ``nuts``/``vi``/``map``).
    vcov: DataFrame, covariance of the fixed effects.
    varcorr: DataFrame in lme4's ``as.data.frame(VarCorr(fit))`` layout (group, var1, var2,
        vcov, sd_or_cor).
    sigma: residual SD of a gaussian model, else None.
    family_params: the family's own parameters (negbinomial ``shape``, cumulative
        ``thresholds``...); ``family_params_se`` their standard errors (delta method on the
        inverse Hessian, as ordinal::clmm and glmmTMB; likelihood fits other than REML/ML).
    ranef: dict group -> DataFrame indexed by level: conditional modes and ``<term>_sd``
        conditional SDs.
    loglik: maximized log-likelihood (REML criterion -REMLcrit/2 for REML).
    draws: the named posterior draws, each (chain, draw) (``nuts``, ``vi``, ``map``), else
        None; ``posterior`` the same as ArviZ InferenceData (built on first use);
        ``posterior_summary`` their table (mean, sd, q2.5, q97.5, rhat, ess_bulk, ess_tail,
        mcse_mean); ``priors`` the priors in use; ``diagnostics`` the sampler's record.
    optinfo: the optimizer's record (as MixedModels.jl's OptSummary): ``x`` (final outer
        parameters), ``objective`` and ``objective0`` (deviance scale, final and initial),
        ``grad`` and ``hessian`` at the optimum, ``n_iter``, ``status``.
    """

    model: Any
    method: str
    fixef: pd.Series
    fixef_se: pd.Series
    vcov: pd.DataFrame
    varcorr: pd.DataFrame
    sigma: float | None
    family_params: dict
    loglik: float | None
    df: int
    ranef: dict
    converged: bool
    singular: bool
    messages: tuple
    seconds: float
    theta: np.ndarray
    n_iter: int
    b: tuple = field(repr=False, default=())
    b_factors: tuple = field(repr=False, default=())
    family_params_se: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    optinfo: dict = field(repr=False, default_factory=dict)
    draws: dict | None = field(repr=False, default=None)
    posterior_summary: pd.DataFrame | None = field(repr=False, default=None)
    priors: tuple = ()
    diagnostics: dict = field(repr=False, default_factory=dict)

    @functools.cached_property
    def posterior(self):
        """ArviZ InferenceData of :attr:`draws` (None for a likelihood fit)."""
        if self.draws is None:
            return None
        import arviz as az
        return az.from_dict(posterior=self.draws)

    # ------------------------------------------------------------------ information criteria
    @property
    def nobs(self) -> int:
        return self.model.design.nobs

    @property
    def aic(self) -> float | None:
        return None if self.loglik is None else -2.0 * self.loglik + 2.0 * self.df

    @property
    def bic(self) -> float | None:
        return None if self.loglik is None else -2.0 * self.loglik + math.log(self.nobs) * self.df

    @property
    def family(self) -> str:
        return self.model.family.name

    @property
    def link(self) -> str:
        return self.model.family.link.name

    def summary(self):
        return Summary.from_fit(self)

    def __repr__(self) -> str:
        return str(self.summary())

    # ------------------------------------------------------------------ export
    def to_dict(self) -> dict:
        """The ``fit.json`` record of docs/INTERFACE.md."""
        vc = []
        for r in self.varcorr.itertuples(index=False):
            vc.append({"group": r.group, "var1": _label(r.var1), "var2": _label(r.var2),
                       "sd_or_cor": _num(r.sd_or_cor)})
        fp = {k: (np.asarray(v).tolist() if np.ndim(v) else float(v))
              for k, v in self.family_params.items()}
        out = {
            "formula": self.model.formula, "family": self.family, "link": self.link,
            **({"dpars": dict(self.model.dpars)} if self.model.dpars else {}),
            "method": self.method, "nobs": self.nobs,
            "fixef": {k: _num(v) for k, v in self.fixef.items()},
            "fixef_se": {k: _num(v) for k, v in self.fixef_se.items()},
            "varcorr": vc, "sigma": None if self.sigma is None else float(self.sigma),
            "family_params": fp,
            **({"family_params_se": {k: (np.asarray(v).tolist() if np.ndim(v) else _num(v))
                                     for k, v in self.family_params_se.items()}}
               if self.family_params_se else {}),
            "loglik": _num(self.loglik), "aic": _num(self.aic),
            "bic": _num(self.bic), "converged": bool(self.converged),
            "messages": list(self.messages), "seconds": float(self.seconds),
        }
        if self.posterior_summary is not None:
            out["priors"] = list(self.priors)
            out["posterior"] = {
                name: {k: _num(row[k]) for k in ("mean", "sd", "q2.5", "q97.5", "rhat", "ess_bulk")}
                for name, row in self.posterior_summary.iterrows()}
        return out

    def ranef_long(self) -> pd.DataFrame:
        """ranef as rows: group, level, term, estimate, condsd (the CLI's ranef.csv)."""
        rows = []
        for group, frame in self.ranef.items():
            terms = [c for c in frame.columns if not c.endswith("_sd")]
            for level, r in frame.iterrows():
                for t in terms:
                    rows.append((group, level, t, r[t], r[f"{t}_sd"]))
        return pd.DataFrame(rows, columns=["group", "level", "term", "estimate", "condsd"])

    # ------------------------------------------------------------------ prediction
    def linear_predictor(self, newdata: pd.DataFrame | None = None, re_form=None,
                         allow_new_levels: bool = True) -> np.ndarray:
        """eta = offset + X beta (+ Z b unless ``re_form`` is ``"~0"``/``NA``).

        (n,), or (n, C) for a model with C linear predictors (categorical).  The same
        function as the model's log-density (:mod:`jaxglmm.core.predictor`).
        """
        include_re = not _is_no_re(re_form)
        problem = self.model.problem
        if newdata is None:
            arrays = problem.arrays
        else:
            arrays = self.model.new_arrays(newdata, allow_new_levels, include_re)
        beta = jnp.asarray(self.fixef.to_numpy(float))
        eta = fixed_predictor(problem.structure, arrays, beta)
        if include_re:
            eta = eta + random_predictor(problem.structure, self.b_factors, arrays.index,
                                         arrays.Z)
        return np.asarray(eta)

    def predict(self, newdata: pd.DataFrame | None = None, re_form=None, type: str = "response",
                allow_new_levels: bool = True) -> pd.Series:
        """Predictions as lme4's ``predict.merMod``.

        ``re_form=None`` includes all random effects (levels unseen in training get zero);
        ``re_form="~0"`` (or ``NA``) gives population-level predictions.  ``type`` is
        ``"link"`` or ``"response"``.
        """
        eta = self.linear_predictor(newdata, re_form, allow_new_levels)
        if type == "link":
            out = eta
        elif type == "response":
            fam = self.model.family
            mean = fam.mean or fam.link.linkinv
            out = np.asarray(mean(jnp.asarray(eta), self._natural_family_params()))
        else:
            raise ValueError(f"type must be 'link' or 'response', got {type!r}")
        index = newdata.index if newdata is not None else None
        if np.ndim(out) == 2:
            levels = self.model.design.response_levels
            cols = list(levels) if out.shape[1] == len(levels) else list(levels[1:])
            return pd.DataFrame(out, index=index, columns=cols)
        return pd.Series(out, index=index, name="predicted")

    def simulate(self, n: int = 1, seed: int | None = None, re_form="~0") -> pd.DataFrame:
        """Simulate responses from the fitted model, as lme4's ``simulate.merMod``.

        By default (``re_form="~0"``, lme4's ``re.form = NA``) new random effects are drawn
        from their fitted distribution; ``re_form=None`` conditions on the fitted modes.

        Prior weights, as lme4: a gaussian model's are precision weights (residual SD
        ``sigma / sqrt(w)``; rows of weight zero simulate as NaN); a binomial proportion's
        weights are its trials (already in the design).  Other families' weights are
        frequency weights, which one simulated response per row cannot honour: they are
        ignored, with a warning (lme4 warns "ignoring prior weights" there too).
        """
        fam = self.model.family
        if fam.simulate is None:
            raise NotImplementedError(f"family {fam.name!r} has no simulator")
        key = jax.random.PRNGKey(0 if seed is None else seed)
        design = self.model.design
        w = np.asarray(design.weights, float)
        weighted = bool(np.any(w != 1.0))
        precision = weighted and fam.exact_lmm
        if weighted and not precision:
            warnings.warn(f"simulate ignores the prior weights of this {fam.name} model: they "
                          "are frequency weights, and each row gets one simulated response",
                          stacklevel=2)
        eta_fixed = self.linear_predictor(re_form="~0")
        fp = self._natural_family_params()
        trials = jnp.asarray(design.trials if design.trials is not None else np.ones(design.nobs))
        cols = {}
        for k in range(n):
            key, k_re, k_y = jax.random.split(key, 3)
            if _is_no_re(re_form):
                eta = eta_fixed + self._draw_re_predictor(k_re)
            else:
                eta = self.linear_predictor(re_form=None)
            y = np.asarray(fam.simulate(k_y, jnp.asarray(eta), trials, fp))
            if precision:
                with np.errstate(divide="ignore", invalid="ignore"):
                    y = np.where(w > 0, eta + (y - eta) / np.sqrt(w), np.nan)
            cols[f"sim_{k + 1}"] = y
        return pd.DataFrame(cols)

    # ------------------------------------------------------------------ internals
    def _natural_family_params(self) -> dict:
        fp = {k: jnp.asarray(v) for k, v in self.family_params.items()}
        if self.sigma is not None:
            fp[self.model.family.residual] = jnp.asarray(self.sigma)
        return fp

    def _draw_re_predictor(self, key) -> np.ndarray:
        """Z b for new random effects drawn from their fitted distribution (one draw per
        design term, in the design's order)."""
        problem = self.model.problem
        s = problem.structure
        # Lambda is relative to sigma only for the exact gaussian (LMM) fits
        scale = self.sigma if problem.exact_lmm else 1.0
        covs = term_covariances(s, self.theta, scale)
        where = {(t.label, t.names): (k, t.col0) for k, f in enumerate(s.factors) for t in f.terms}
        b = [np.zeros((f.n_levels, f.q)) for f in s.factors]
        for t in problem.design.terms:
            key, sub = jax.random.split(key)
            cov = covs[(t.label, tuple(t.names))]
            L = np.linalg.cholesky(cov + 1e-12 * np.eye(t.q))
            k, col0 = where[(t.label, tuple(t.names))]
            b[k][:, col0:col0 + t.q] = np.asarray(jax.random.normal(sub, (t.n_levels, t.q))) @ L.T
        a = problem.arrays
        return np.asarray(random_predictor(s, b, a.index, a.Z))


def _is_no_re(re_form) -> bool:
    if re_form is None:
        return False
    if isinstance(re_form, float) and math.isnan(re_form):
        return True
    if isinstance(re_form, str) and re_form.replace(" ", "") in ("~0", "NA", "~1-1", "0"):
        return True
    raise ValueError(f"re_form must be None (all random effects) or '~0' (none), got {re_form!r}")


def _label(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _num(v):
    if v is None:
        return None
    v = float(v)
    return None if not math.isfinite(v) else v
