"""The fitted result: an immutable record with pandas accessors, prediction and simulation."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from .._lazy import pandas as pd

from ..core.predictor import fixed_predictor, random_predictor
from ..core.problem import Problem, prediction_arrays
from ..design import new_design, re_masks, re_terms, used_columns
from ..fit import cache
from ..fit.likelihood import COMPILER_OPTIONS
from ..core.lazy import LazyField, resolved_state
from .spec import ModelSpec
from .simulate import simulate_responses
from .summary import Summary

# The methods that call jaxglmm.inference's free functions of the same names.  inference sits
# above this stage, so each imports it when called: the only jaxglmm imports inside
# functions (tests/test_architecture.py holds this list).
INFERENCE_METHODS = ("bootstrap", "confint", "power", "influence", "cooks_distance",
                     "hatvalues", "leave_one_out", "sensitivity", "coef_table")
# FitResult's fields built on first read (jaxglmm.results.lazy)
LAZY_FIELDS = ("fixef", "fixef_se", "fixef_vcov", "varcorr", "ranef")


@dataclass(frozen=True)
class FitResult:
    """A fitted mixed model.  Nothing here mutates; accessors return pandas objects.

    Attributes
    ----------
    problem: the :class:`~jaxglmm.core.problem.Problem` fitted (structure, family, device
        arrays, design); spec: the :class:`~jaxglmm.results.spec.ModelSpec` (formula, data,
        the model's arguments); ``jaxglmm.Model.of(fit.problem, fit.spec)`` is the model.
    fixef, fixef_se: Series of fixed effects and their standard errors (posterior means and
        SDs for ``nuts``/``vi``/``map``).
    fixef_vcov: DataFrame, covariance of the fixed effects (:meth:`vcov` returns a copy).
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

    The pandas fields (fixef, fixef_se, fixef_vcov, varcorr, ranef) are built when first
    read and kept (:mod:`jaxglmm.results.lazy`): a fit pays nothing for those it never reads.
    """

    problem: Problem
    spec: ModelSpec
    method: str
    fixef: pd.Series = LazyField()
    fixef_se: pd.Series = LazyField()
    fixef_vcov: pd.DataFrame = LazyField()
    varcorr: pd.DataFrame = LazyField()
    sigma: float | None
    family_params: dict
    loglik: float | None
    df: int
    ranef: dict = LazyField()
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

    def __getstate__(self) -> dict:
        return resolved_state(self, LAZY_FIELDS)

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
        return self.problem.design.nobs

    @property
    def aic(self) -> float | None:
        return None if self.loglik is None else -2.0 * self.loglik + 2.0 * self.df

    @property
    def bic(self) -> float | None:
        return None if self.loglik is None else -2.0 * self.loglik + math.log(self.nobs) * self.df

    @property
    def family(self) -> str:
        return self.problem.family.name

    @property
    def link(self) -> str:
        return self.problem.family.link.name

    # ------------------------------------------------------------------ lme4's accessors
    def vcov(self) -> pd.DataFrame:
        """Covariance of the fixed effects, lme4's ``vcov(fit)``: ``sigma^2 (R_X' R_X)^-1``
        for an LMM, the inverse Hessian of the deviance in (theta, beta) for a GLMM
        (lme4's ``use.hessian = TRUE``), the posterior covariance for a Bayesian fit."""
        return self.fixef_vcov.copy()

    def fitted(self) -> pd.Series:
        """lme4's ``fitted(fit)``: the mean of each training row conditional on the random
        effects' modes, on the response scale (per trial for binomial, as R's
        proportions), indexed as the rows the model used."""
        self._scalar_response("fitted()")
        return self.predict().rename("fitted")

    def residuals(self, type: str | None = None, scaled: bool = False) -> pd.Series:
        """lme4's ``residuals(fit, type=)`` of the training rows, conditional on the random
        effects' modes (``type`` None: lme4's default, ``"response"`` for a linear mixed
        model, ``"deviance"`` for the other families):

        * ``"response"``: ``y - fitted`` (binomial: the observed proportion minus the fitted
          one, as R's);
        * ``"pearson"``: ``sqrt(w) (y - mu) / sqrt(V(mu))``, with V the family's variance of
          one observation; for gaussian models V leaves out sigma, as lme4's (unscaled)
          Pearson residuals do (``summary``'s "Scaled residuals" divide by it);
        * ``"deviance"``: ``sign(y - mu) sqrt(w d(y, mu))``, d the family's unit deviance
          (R's ``dev.resids``); refused for families R defines none for;
        * ``"working"``: ``(y - mu) / (dmu/deta)``, the residuals of the IRLS working response
          (lme4's ``wrkResids``; unweighted; ``y - mu`` for an LMM, as lme4's).

        ``w`` are the prior weights (the binomial's trials included).  ``scaled=True``
        divides by the residual SD (lme4's ``scaled = TRUE``, ``r / sigma(fit)``): sigma for
        gaussian models, 1 for families with no scale parameter (binomial, poisson,
        bernoulli); refused for families with another dispersion parameter, whose lme4
        sigma is not defined here."""
        types = ("response", "pearson", "deviance", "working")
        if type is None:
            type = "response" if self.problem.family.exact_lmm else "deviance"
        if type not in types:
            raise ValueError(f"type must be one of {types}, got {type!r}")
        self._scalar_response("residuals()")
        if scaled:
            fam = self.problem.family
            if self.sigma is None and self.family_params:
                raise ValueError(f"scaled=True divides by lme4's sigma(fit), which for the "
                                 f"{fam.name} family (parameters {sorted(self.family_params)}) "
                                 "is not defined here; use scaled=False")
            r = self.residuals(type)
            return r / (float(self.sigma) if self.sigma is not None else 1.0)
        fam, design = self.problem.family, self.problem.design
        mu = self.fitted().to_numpy(float)
        y = np.asarray(design.y, float)
        trials = np.asarray(self.problem.arrays.trials, float)
        w = np.asarray(design.weights, float)
        index = design.row_index
        with np.errstate(divide="ignore", invalid="ignore"):
            if type in ("response", "working"):
                obs = np.where(trials > 0, y / trials, np.nan) if fam.needs_trials else y
                r = obs - mu
                if type == "working":
                    eta = jnp.asarray(self.linear_predictor(), jnp.float64)
                    dmu = _on_device(("dmu/deta", fam.link),
                                     lambda e: jax.vmap(jax.grad(fam.link.linkinv))(e), eta)
                    r = r / np.asarray(dmu, float)
                return pd.Series(r, index=index, name="residuals")
            if type == "pearson":
                if fam.variance is None:
                    raise ValueError(f"Pearson residuals need the {fam.name} family's "
                                     "variance, which it does not define")
                eta = jnp.asarray(self.linear_predictor())
                fp = self._natural_family_params()
                var = np.asarray(_on_device(("variance", fam), fam.variance, eta, fp), float)
                if fam.residual is not None:        # lme4's: unscaled by sigma
                    var = var / np.square(float(np.asarray(fp[fam.residual])))
                r = np.sqrt(w * trials) * (y / np.where(trials > 0, trials, 1.0) - mu) / np.sqrt(var)
                return pd.Series(np.where(trials > 0, r, 0.0), index=index, name="residuals")
            if fam.unit_deviance is None:
                raise ValueError(f"deviance residuals are not defined for the {fam.name} "
                                 "family (R has no dev.resids for it); use type='pearson' "
                                 "or 'response'")
            fp = {k: np.asarray(v) for k, v in self._natural_family_params().items()}
            d = np.asarray(fam.unit_deviance(y, mu, trials, fp), float)    # host numpy
            r = np.sign(y - trials * mu) * np.sqrt(np.clip(w * d, 0.0, None))
        return pd.Series(r, index=index, name="residuals")

    # ------------------------------------------------------------------ inference
    # one-line conveniences for the free functions of jaxglmm.inference (INFERENCE_METHODS)
    def bootstrap(self, n: int = 1000, statistic=None, seed: int | None = None,
                  use_re: str = "sample", progress: bool | None = None) -> pd.DataFrame:
        """:func:`jaxglmm.bootstrap` of this fit: lme4's ``bootMer``."""
        from .. import inference
        return inference.bootstrap(self, n, statistic, seed, use_re, progress)

    def confint(self, method: str = "wald", level: float = 0.95, parm=None,
                **options) -> pd.DataFrame:
        """:func:`jaxglmm.confint` of this fit: lme4's ``confint.merMod``."""
        from .. import inference
        return inference.confint(self, method, level, parm, **options)

    def power(self, term: str, effect: float | None = None, along: str | None = None,
              sizes=None, nsim: int = 1000, test: str = "lrt", alpha: float = 0.05,
              seed: int | None = None, progress: bool | None = None):
        """:func:`jaxglmm.power` of this fit: simr's ``powerSim``/``powerCurve``."""
        from .. import inference
        return inference.power(self, term, effect, along, sizes, nsim, test, alpha, seed,
                               progress)

    def influence(self, level: str = "obs") -> pd.DataFrame:
        """:func:`jaxglmm.influence` of this fit: first-order deletion diagnostics."""
        from .. import inference
        return inference.influence(self, level)

    def cooks_distance(self, level: str = "obs", exact: bool | None = None) -> pd.Series:
        """:func:`jaxglmm.cooks_distance` of this fit: lme4's ``cooks.distance``."""
        from .. import inference
        return inference.cooks_distance(self, level, exact)

    def hatvalues(self) -> pd.Series:
        """:func:`jaxglmm.hatvalues` of this fit: lme4's ``hatvalues``."""
        from .. import inference
        return inference.hatvalues(self)

    def leave_one_out(self, group: str) -> pd.DataFrame:
        """:func:`jaxglmm.leave_one_out` of this fit: exact refits without each level of
        ``group`` (lme4's ``influence(fit, groups=)``)."""
        from .. import inference
        return inference.leave_one_out(self, group)

    def sensitivity(self, prior: str | None = None) -> pd.DataFrame:
        """:func:`jaxglmm.sensitivity` of this MAP fit: derivatives of the mode in the
        priors' arguments."""
        from .. import inference
        return inference.sensitivity(self, prior)

    def coef_table(self, ddf: str | None = None, exponentiate: bool = False) -> pd.DataFrame:
        """:func:`jaxglmm.coef_table` of this fit: Estimate, Std. Error, (df,) the t or z
        value and its p-value (``ddf`` as lmerTest's ``summary(fit, ddf=)``)."""
        from .. import inference
        return inference.coef_table(self, ddf, exponentiate)

    def _scalar_response(self, what: str) -> None:
        fam = self.problem.family
        if fam.per_category or fam.category_probs is not None or self.spec.dpars:
            kind = ("a categorical or ordinal response" if not self.spec.dpars
                    else "a model with distributional-parameter formulas")
            raise ValueError(f"{what} needs one mean per row, which {kind} does not have; "
                             "use predict(type='response') for its probabilities or "
                             "parameters")

    # ------------------------------------------------------------------ summaries
    def summary(self, correlation: bool = True, ddf: str | None = None):
        """lme4's summary as a data object that prints (brms-style for Bayesian fits);
        ``correlation=False`` leaves out the correlation of the fixed effects; ``ddf``
        (``"satterthwaite"`` or ``"kenward-roger"``, LMMs) prints lmerTest's table."""
        return Summary.from_fit(self, correlation=correlation, ddf=ddf)

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
            "formula": self.spec.formula, "family": self.family, "link": self.link,
            **({"dpars": dict(self.spec.dpars)} if self.spec.dpars else {}),
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
    def linear_predictor(self, newdata=None, re_form=None,
                         allow_new_levels: bool = True) -> np.ndarray:
        """eta = offset + X beta + Z b, the random effects chosen by ``re_form`` (see
        :meth:`predict`).  (n,), or (n, C) for a model with C linear predictors
        (categorical).  The same function as the model's log-density
        (:mod:`jaxglmm.core.predictor`).  Rows of ``newdata`` with a missing value in a
        column the prediction uses give NaN (lme4's ``na.action = na.pass``)."""
        newdata = _frame(newdata)
        chosen = re_terms(self.problem.design, re_form)
        mask = re_masks(self.problem.design, self.problem.structure.factors, chosen)
        if newdata is None:
            return self._eta(self.problem.arrays, mask)
        complete = self._complete(newdata, chosen)
        arrays = prediction_arrays(new_design(self.problem.design, newdata.loc[complete],
                                              allow_new_levels, chosen))
        return _fill(self._eta(arrays, mask), complete)

    def predict(self, newdata=None, re_form=None, type: str = "response",
                allow_new_levels: bool = True):
        """Predictions as lme4's ``predict.merMod`` (and brms's for ordinal models).

        ``newdata``: a DataFrame or a mapping of column -> values (the training data when
        None).  ``re_form``: None conditions on every random effect (levels unseen in
        training get zero); ``"~0"`` (or ``NA``) gives population-level predictions; a
        formula of some of the model's random terms, e.g. ``"~(1 | LOCATION)"``, conditions
        on those only.  ``type``:

        * ``"link"``: the linear predictor;
        * ``"response"``: the mean on the response scale; for categorical and cumulative
          (ordinal) models a DataFrame of category probabilities, one column per level;
        * ``"mean"``: the expected value; for an ordinal model with numeric labels it is
          ``sum_k P(Y = k) * label_k`` on the labels' own scale.

        Rows of ``newdata`` with a missing value in a column the prediction uses give NaN.
        """
        if type not in ("link", "response", "mean"):
            raise ValueError(f"type must be 'link', 'response' or 'mean', got {type!r}")
        newdata = _frame(newdata)
        eta = self.linear_predictor(newdata, re_form, allow_new_levels)
        index = newdata.index if newdata is not None else self.problem.design.row_index
        fam = self.problem.family
        levels = self.problem.design.response_levels
        if type == "link":
            out = eta
        elif fam.category_probs is not None or (fam.per_category and type == "response"):
            probs = self._category_probs(eta)
            if type == "response":
                return pd.DataFrame(probs, index=index, columns=list(levels))
            values = _numeric_labels(levels)
            if values is None:
                raise ValueError(f"type='mean' needs numeric category labels; the levels of "
                                 f"{self.problem.design.response_name!r} are {list(levels)}: "
                                 "use type='response' for their probabilities")
            out = probs @ values
        elif fam.per_category:
            raise ValueError("type='mean' is not defined for an unordered categorical "
                             "response; use type='response' for the category probabilities")
        else:
            mean = fam.mean or fam.link.linkinv
            fp = self._natural_family_params()
            out = _nan_rows(eta, lambda e: _on_device(("mean", fam), mean, e, fp))
        if np.ndim(out) == 2:
            if levels is None:      # a parameter formula: the mean's and the parameter's
                cols = ["mu"] + list(self.spec.dpars)
            else:
                cols = list(levels) if out.shape[1] == len(levels) else list(levels[1:])
            return pd.DataFrame(out, index=index, columns=cols)
        return pd.Series(out, index=index, name="predicted")

    def simulate(self, n: int = 1, seed: int | None = None, re_form="~0",
                 newdata=None) -> pd.DataFrame:
        """Simulate responses from the fitted model, as lme4's ``simulate.merMod``.

        By default (``re_form="~0"``, lme4's ``re.form = NA``) new random effects are drawn
        from their fitted distribution, for every level (in ``newdata``, levels unseen in
        training too); ``re_form=None`` conditions on the fitted modes; a formula of some
        random terms conditions on those and draws the others.  ``newdata`` (a DataFrame or
        mapping) simulates for new rows; a binomial model needs its trials columns there.

        The simulated response is on the response's own scale, so it can be fed back as the
        same response: proportions for lme4's ``prop ~ ..., weights = n`` idiom, and the
        response's labels (a pandas Categorical, ordered for ordinal models) for
        categorical and cumulative models.

        Prior weights, as lme4: a gaussian model's are precision weights (residual SD
        ``sigma / sqrt(w)``; rows of weight zero simulate as NaN); a binomial proportion's
        weights are its trials (already in the design).  Other families' weights are
        frequency weights, which one simulated response per row cannot honour: they are
        ignored, with a warning (lme4 warns "ignoring prior weights" there too).
        """
        return simulate_responses(self, n, seed, re_form, _frame(newdata))

    # ------------------------------------------------------------------ internals
    def _natural_family_params(self) -> dict:
        fp = {k: jnp.asarray(v) for k, v in self.family_params.items()}
        if self.sigma is not None:
            fp[self.problem.family.residual] = jnp.asarray(self.sigma)
        return fp

    def _eta(self, arrays, mask):
        s = self.problem.structure

        def eta(arrays, beta, b_factors, mask):
            out = fixed_predictor(s, arrays, beta)
            if mask is not None:
                b = [bf * m for bf, m in zip(b_factors, mask)]
                out = out + random_predictor(s, b, arrays.index, arrays.Z)
            return out

        mask = None if mask is None else tuple(jnp.asarray(m) for m in mask)
        return np.asarray(_on_device(("eta", s, mask is None), eta, arrays,
                                     jnp.asarray(self.fixef.to_numpy(float)),
                                     tuple(self.b_factors), mask))

    def _pearson_residuals(self) -> np.ndarray | None:
        """lme4's ``residuals(fit, type = "pearson", scaled = TRUE)`` of the training rows:
        ``sqrt(w) (y - E[y]) / sd(y)`` (the residual SD included, so for an LMM the
        residuals are scaled by sigma); None for an unordered categorical response, which
        has no scalar residual, and for Bayesian fits."""
        fam, design = self.problem.family, self.problem.design
        if fam.per_category or fam.variance is None or self.draws is not None:
            return None
        eta = jnp.asarray(self.linear_predictor())
        fp = self._natural_family_params()
        trials = np.asarray(self.problem.arrays.trials)
        mean, var = _on_device(("moments", fam), lambda e, fp: (
            (fam.mean or fam.link.linkinv)(e, fp), fam.variance(e, fp)), eta, fp)
        mean, var = np.asarray(mean) * trials, np.asarray(var) * trials
        w = np.asarray(design.weights, float)
        keep = w > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.sqrt(w) * (np.asarray(design.y) - mean) / np.sqrt(var)
        return r[keep]

    def _complete(self, newdata: pd.DataFrame, random_effects) -> np.ndarray:
        cols = [c for c in used_columns(self.problem.design, random_effects) if c in newdata.columns]
        return newdata[cols].notna().all(axis=1).to_numpy() if cols else \
            np.ones(len(newdata), bool)

    def _category_probs(self, eta) -> np.ndarray:
        fam = self.problem.family
        probs = fam.category_probs if fam.category_probs is not None else fam.mean
        fp = self._natural_family_params()
        return _nan_rows(eta, lambda e: _on_device(("probs", fam), probs, e, fp), rows_2d=True)



def _frame(newdata) -> pd.DataFrame | None:
    """New data as a DataFrame: a DataFrame, or a mapping of column -> values."""
    if newdata is None or isinstance(newdata, pd.DataFrame):
        return newdata
    if isinstance(newdata, Mapping):
        return pd.DataFrame(dict(newdata))
    raise TypeError(f"newdata must be a pandas DataFrame or a mapping of column names to "
                    f"values, got {type(newdata).__name__}")


def _fill(eta: np.ndarray, complete: np.ndarray) -> np.ndarray:
    """Rows of ``eta`` back in place among all rows, NaN where a row was incomplete."""
    if complete.all():
        return eta
    out = np.full((complete.size,) + eta.shape[1:], np.nan)
    out[complete] = eta
    return out


def _on_device(key: tuple, fn, *args):
    """``fn(*args)`` as one small compiled program kept under ``("result", *key)`` (``key``
    holds what ``fn`` closes over).  Run eagerly, each jax.numpy operation of a result's
    row-wise work compiles a program of its own: about 20 of them, 0.6 s, for a
    sleepstudy summary, against one or two here."""
    return cache.program(("result",) + key, lambda: cache.jit(
        fn, compiler_options=COMPILER_OPTIONS))(*args)


def _nan_rows(eta, fn, rows_2d: bool = False) -> np.ndarray:
    """``fn`` of the complete rows of ``eta``, NaN in the rest."""
    eta = np.asarray(eta, float)
    ok = np.all(np.isfinite(eta), axis=tuple(range(1, eta.ndim))) if eta.ndim > 1 else \
        np.isfinite(eta)
    if ok.all():
        return np.asarray(fn(jnp.asarray(eta)))
    values = np.asarray(fn(jnp.asarray(eta[ok])))
    out = np.full((ok.size,) + values.shape[1:], np.nan)
    out[ok] = values
    return out


def _numeric_labels(levels) -> np.ndarray | None:
    try:
        return np.array([float(v) for v in levels])
    except (TypeError, ValueError):
        return None


def _label(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _num(v):
    if v is None:
        return None
    v = float(v)
    return None if not math.isfinite(v) else v
