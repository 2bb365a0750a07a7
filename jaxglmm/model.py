"""The user-facing front: formula -> design -> problem -> fit -> result, as lme4's stages.

``Model(formula, data)`` runs the design stage (:func:`jaxglmm.design.model_design`: the
formulas applied to the data, checked and assembled) and core's
(:func:`jaxglmm.core.problem.make_problem`: the structure and device arrays).  ``Model.fit``
checks the method, runs the likelihood or Bayesian fitter on the problem and hands the raw fit
to the one result builder.  Compiled programs are cached by structure, family and shapes
(:mod:`jaxglmm.fit.cache`), so a second dataset of the same shape does not recompile.
"""
from __future__ import annotations

import time
import warnings
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ._lazy import pandas as pd

from .core.predictor import joint_log_density
from .core.problem import Problem, ProblemArrays, make_problem
from .design import Design, column_list, model_design, scale_message
from .families import Family, get_family
from .fit.cache import free_programs_near_map_cap
from .fit.convergence import ConvergenceWarning
from .methods import default_method, get_method, resolve
from .results.build import likelihood_result, posterior_result
from .results.result import FitResult
from .results.spec import ModelSpec

MODEL_KEYWORDS = ("categorical", "levels", "weights", "dpars")


class Model:
    """A mixed model: a formula applied to data with a response family.

    Parameters
    ----------
    formula: lme4/brms formula, e.g. ``"Reaction ~ Days + (Days | Subject)"``.
    data: a pandas DataFrame.
    family: family name (``"gaussian"``, ``"binomial"``, ...) or a :class:`Family`.
    link: optional link name; the family's default otherwise.
    categorical: columns to treat as factors besides string columns.
    levels: ``{column: [level, ...]}`` level order; the first is the reference.
    weights: name of a column of prior weights.
    dpars: formulas for a family parameter, e.g. ``{"zi": "~ x + (1 | g)"}`` for the
        zero-inflation probability (brms's ``zi ~ ...``); see :mod:`jaxglmm.design.dpars`.

    Examples
    --------
    >>> import jaxglmm as jg
    >>> df = jg.load_dataset("sleepstudy")
    >>> fit = jg.Model("Reaction ~ Days + (Days | Subject)", df).fit()
    >>> round(fit.fixef["Days"], 2)
    10.47
    """

    def __init__(self, formula: str, data: pd.DataFrame, family: str | Family = "gaussian",
                 link: str | None = None, *, categorical: Sequence[str] = (),
                 levels: dict | None = None, weights: str | None = None,
                 dpars: dict | None = None):
        if not isinstance(data, pd.DataFrame):
            raise TypeError(f"data must be a pandas DataFrame, got {type(data).__name__}")
        categorical = column_list(categorical, "categorical")
        name = data.attrs.get("name") or \
            f"DataFrame ({data.shape[0]} rows, {data.shape[1]} columns)"
        # how the model was specified: what its fits keep, with its problem
        self.spec = ModelSpec(formula, data, name, {
            "family": family, "link": link, "categorical": categorical, "levels": levels,
            "weights": weights, "dpars": dpars})
        design, family = model_design(formula, data, get_family(family, link),
                                      categorical=categorical, levels=levels,
                                      weights=weights, dpars=self.spec.dpars)
        self.problem: Problem = make_problem(design, family)

    @classmethod
    def of(cls, problem: Problem, spec: ModelSpec) -> "Model":
        """The model a fit was made on, from the fit's ``problem`` and ``spec`` (nothing is
        rebuilt)."""
        model = cls.__new__(cls)
        model.spec, model.problem = spec, problem
        return model

    # the specification's and the problem's pieces, as attributes of the model
    formula = property(lambda self: self.spec.formula, doc="The model's formula.")
    data = property(lambda self: self.spec.data, doc="The DataFrame the model was built on.")
    data_name = property(lambda self: self.spec.data_name, doc="How summaries name the data.")
    weights = property(lambda self: self.spec.weights, doc="The prior-weights column or None.")
    dpars = property(lambda self: self.spec.dpars, doc="Family parameters' formulas.")
    options = property(lambda self: dict(self.spec.arguments),
                       doc="The model's arguments besides formula and data.")
    family = property(lambda self: self.problem.family, doc="The response family.")

    @property
    def design(self) -> Design:
        return self.problem.design

    @property
    def structure(self):
        return self.problem.structure

    @property
    def arrays(self) -> ProblemArrays:
        return self.problem.arrays

    def with_response(self, y) -> "Model":
        """The same model with another response vector (same design otherwise): what a
        refit of it describes (lme4's ``refit``)."""
        return Model.of(self.problem.with_response(y), self.spec)

    # ------------------------------------------------------------------ density
    def init_params(self) -> dict:
        """Starting point of :meth:`log_density`'s parameters."""
        d = self.design
        return {"beta": jnp.zeros(d.n_fixef), "theta": jnp.asarray(self.structure.theta_init()),
                "phi": jnp.asarray(self.family.init_params(d.y, d.trials)),
                "u": jnp.zeros(self.structure.n_u)}

    def log_density(self, params: dict) -> jnp.ndarray:
        """Joint log-density ``log p(y, u | beta, theta, phi)``, pure and jittable.

        ``params`` holds ``beta`` (p,), ``theta`` (lower-triangular elements of each term's
        Cholesky factor ``Lambda``, absolute scale: ``b = Lambda u``), ``phi`` (the family's
        unconstrained parameters) and ``u`` (spherical random effects, N(0, I) a priori).
        This is the one density every fitter builds on; hand it to your own sampler.
        """
        return joint_log_density(self.structure, self.family, self.arrays, params)

    # ------------------------------------------------------------------ fitting
    def default_method(self) -> str:
        return default_method(self.problem.exact_lmm).name

    def resolve_method(self, method: str | None, options: dict) -> tuple[str, dict]:
        """The method's name and its options, checked, with lme4's ``REML=`` and ``nAGQ=``
        mapped (:func:`jaxglmm.methods.resolve`)."""
        spec, options = resolve(self.problem, method, options)
        return spec.name, options

    def check_method(self, method: str, options: dict) -> str:
        """The method's name, lower-cased, after checking the model can use it with these
        options (a ValueError names the problem otherwise)."""
        spec = get_method(method)
        spec.check(self.problem, options)
        return spec.name

    def fit(self, method: str | None = None, **options) -> FitResult:
        """Fit the model; returns an immutable :class:`FitResult`.

        ``method``: ``"reml"``, ``"ml"`` (gaussian), ``"laplace"``, ``"agq"``
        (``agq_points=25``), or the Bayesian ``"nuts"`` (``chains=4, warmup=1000,
        draws=1000, seed=0, target_accept=0.8, priors={...}``), ``"vi"`` (``guide=
        "meanfield"|"lowrank", steps=20000, learning_rate=0.01, draws=1000``) and ``"map"``.
        ``priors`` set priors by class or name as brms writes them, e.g.
        ``{"b": "normal(0, 5)", "sd_Subject": "student_t(3, 0, 10)"}``.
        """
        return fit_problem(self.problem, self.spec, method, **options)

    def fit_fn(self, method: str | None = None, **options):
        """The fit as a pure JAX function ``f(y=None, weights=None, offset=None,
        priors=None) -> FitArrays`` (beta, theta, sigma, family_params, loglik, se), to jit,
        vmap and differentiate; derivatives by the implicit function theorem at the
        optimum.  ``method``: ``"ml"``, ``"reml"``, ``"laplace"`` or ``"map"`` (see
        :func:`jaxglmm.inference.implicit.fit_fn`; inference sits above this stage, so it
        is imported here, when called)."""
        from . import inference
        return inference.fit_fn(self, method, **options)


def fit_problem(problem: Problem, model_spec: ModelSpec, method: str | None = None,
                **options) -> FitResult:
    """What :meth:`Model.fit` runs: check the method against the problem, run it, and build
    the result (which keeps ``problem`` and ``model_spec``); a refit of a result
    (:func:`jaxglmm.anova`'s ML refits, profiles) calls it with the result's own."""
    record, options = resolve(problem, method, options)
    free_programs_near_map_cap()
    start = time.perf_counter()
    raw = record.runner(problem, record, record.settings(options))
    if record.bayesian:
        result = posterior_result(model_spec, problem, record.name, options, raw)
    else:
        raw = jax.device_get(raw)
        result = likelihood_result(model_spec, problem, record.name, options, raw,
                                   time.perf_counter() - start)
        if not np.isfinite(result.loglik):
            raise FloatingPointError(
                f"the {record.name} fit ended at a non-finite log-likelihood: no fixed "
                "effects were found where every observation has positive likelihood under "
                f"the {problem.family.name} family's {problem.family.link.name} link (for "
                "example a log link whose mean passes 1); try another link")
    warn_of(result, problem.design)
    return result


def warn_of(result: FitResult, design: Design) -> None:
    """A :class:`ConvergenceWarning` for each problem of a fit, as lme4 warns: not converged
    (the verdict's messages), a singular fit, a confounded design, predictors on very
    different scales."""
    notes = [m for m in result.messages if m not in design.messages] if not result.converged \
        else [m for m in result.messages if m.startswith("boundary (singular) fit")]
    scale = scale_message(design.X)
    for message in tuple(design.warnings) + ((scale,) if scale else ()) + tuple(notes):
        warnings.warn(message, ConvergenceWarning, stacklevel=4)


def fit(formula: str, data: pd.DataFrame, family: str | Family = "gaussian",
        method: str | None = None, link: str | None = None, **kwargs) -> FitResult:
    """Build a :class:`Model` and fit it in one call.

    Keyword arguments ``categorical``, ``levels`` and ``weights`` go to the model; the rest
    are method options (e.g. ``agq_points``).
    """
    model_kw = {k: kwargs.pop(k) for k in MODEL_KEYWORDS if k in kwargs}
    return Model(formula, data, family, link, **model_kw).fit(method, **kwargs)
