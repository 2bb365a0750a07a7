"""The user-facing pipeline: formula -> design -> log-density -> fit -> result.

``Model`` holds the immutable design and its :class:`~jaxglmm.core.problem.Problem` (the plain
value every fitter is handed); ``Model.fit`` checks the method, runs the likelihood or
Bayesian fitter on the problem and hands the raw fit to the one result builder.  Compiled
programs are cached by structure, family and shapes (:mod:`jaxglmm.fit.cache`), so a second
dataset of the same shape does not recompile (``fit_many`` vmaps the same functions).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import replace
from typing import Sequence

import jax
import jax.numpy as jnp
import pandas as pd

from .bayes.drivers import BAYES_METHODS, check_options, run_bayes
from .core.predictor import joint_log_density
from .core.problem import Problem, ProblemArrays, make_problem, problem_arrays
from .core.resystem import build_structure
from .design import Design, build_design, channels
from .design import dpars as dpar_mod
from .families import Family, get_family
from .fit import likelihood
from .fit.cache import relieve_map_pressure
from .fit.convergence import ConvergenceWarning
from .results.build import likelihood_result, posterior_result
from .results.result import FitResult

MODEL_KEYWORDS = ("categorical", "levels", "weights", "dpars")
METHODS = likelihood.LIKELIHOOD_METHODS + BAYES_METHODS
BAYES = BAYES_METHODS


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
        self.formula = formula
        self.family = get_family(family, link)
        build = lambda f, d: build_design(f, d, self.family, categorical=tuple(categorical),
                                          levels=levels, weights=weights)
        self.dpars = dict(dpars or {})
        dpar_mod.check_dpars(self.family, self.dpars)
        self._extra = None
        if self.dpars:
            (name, text), = self.dpars.items()
            extra_formula = dpar_mod.dpar_formula(formula, name, text)
            data, n_na = dpar_mod.complete_rows(data, [formula, extra_formula])
            main = build(formula, data)
            self._extra = build(extra_formula, data)
            if n_na:
                main = replace(main, n_dropped=n_na, messages=(
                    f"{n_na} rows with missing values in used columns were dropped",))
        else:
            main = build(formula, data)
        self.family.validate(main.y, main.trials)
        self._main = main
        design, fixef_channels, self.n_channels = self._assemble(main, self._extra)
        if self.dpars:
            self.family = dpar_mod.with_dpar_predictor(self.family, next(iter(self.dpars)))
        structure, arrays = problem_arrays(design)
        structure = replace(structure, n_channels=self.n_channels, fixef_channels=fixef_channels)
        self.problem: Problem = make_problem(design, self.family, structure, arrays)

    # the problem's pieces, as attributes of the model
    @property
    def design(self) -> Design:
        return self.problem.design

    @property
    def structure(self):
        return self.problem.structure

    @property
    def arrays(self) -> ProblemArrays:
        return self.problem.arrays

    def _assemble(self, main: Design, extra: Design | None):
        """The model's design from the main (and parameter-formula) designs: categorical
        expansion, a parameter formula as channel 1, and correlation-ID merging.  Used for
        the training data and, with the same steps, for new data."""
        fixef_channels = ()
        n_channels = 1
        if extra is not None:
            design, fixef_channels = dpar_mod.combine(main, extra, next(iter(self.dpars)))
            n_channels = 2
        else:
            design = main
            C = channels.n_categories(self.family, main)
            if C > 1:
                design, fixef_channels = channels.expand_categories(main, main.response_levels[1:])
                n_channels = C
        design = replace(design, terms=channels.merge_ids(design.terms))
        return design, fixef_channels, n_channels

    def new_arrays(self, data: pd.DataFrame, allow_new_levels: bool = True,
                   random_effects: bool = True) -> ProblemArrays:
        """The model's arrays for new data (X, offset and, with ``random_effects``, each
        grouping factor's index and Z), in this model's (possibly expanded) columns and
        factor order; y, weights and trials are placeholders."""
        def rebuilt(design: Design) -> Design:
            nd = design.new_data(data, allow_new_levels=allow_new_levels,
                                 random_effects=random_effects)
            terms = tuple(replace(t, group_index=n.group_index, Z=n.Z)
                          for t, n in zip(design.terms, nd.terms)) if random_effects else ()
            return replace(design, X=nd.X, offset=nd.offset, terms=terms)
        extra = rebuilt(self._extra) if self._extra is not None else None
        design, _, _ = self._assemble(rebuilt(self._main), extra)
        n = design.X.shape[0]
        index, Z = (), ()
        if random_effects:
            _, index, Z = build_structure(design.terms)
            index = tuple(jnp.asarray(i, jnp.int32) for i in index)
            Z = tuple(jnp.asarray(z, jnp.float64) for z in Z)
        ones = jnp.ones(n)
        return ProblemArrays(y=ones, X=jnp.asarray(design.X, jnp.float64),
                             offset=jnp.asarray(design.offset, jnp.float64), weights=ones,
                             trials=ones, index=index, Z=Z)

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
        return "reml" if self.problem.exact_lmm else "laplace"

    def _exact_gaussian(self) -> bool:
        return self.problem.exact_lmm

    def _phi0(self):
        return jnp.asarray(self.problem.phi0, jnp.float64)

    def check_method(self, method: str, options: dict) -> str:
        """The method's name, lower-cased, after checking the model can use it with these
        options (a ValueError names the problem otherwise)."""
        method = method.lower()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
        if method in BAYES:
            check_options(method, options)
        else:
            likelihood.check_method(self.problem, method, options)
        return method

    def fit(self, method: str | None = None, **options) -> FitResult:
        """Fit the model; returns an immutable :class:`FitResult`.

        ``method``: ``"reml"``, ``"ml"`` (gaussian), ``"laplace"``, ``"agq"``
        (``agq_points=25``), or the Bayesian ``"nuts"`` (``chains=4, warmup=1000,
        draws=1000, seed=0, target_accept=0.8, priors={...}``), ``"vi"`` (``guide=
        "meanfield"|"lowrank", steps=20000, learning_rate=0.01, draws=1000``) and ``"map"``.
        ``priors`` set priors by class or name as brms writes them, e.g.
        ``{"b": "normal(0, 5)", "sd_Subject": "student_t(3, 0, 10)"}``.
        """
        method = self.check_method(method or self.default_method(), options)
        relieve_map_pressure()
        if method in BAYES:
            result = posterior_result(self, self.problem, method, options,
                                      run_bayes(self.problem, method, options))
        else:
            start = time.perf_counter()
            raw = jax.device_get(likelihood.run(self.problem, method, options))
            result = likelihood_result(self, self.problem, method, options, raw,
                                       time.perf_counter() - start)
        warn_of(result)
        return result


def warn_of(result: FitResult) -> None:
    """A :class:`ConvergenceWarning` for each problem of a fit, as lme4 warns: not converged
    (the verdict's messages), a singular fit, a confounded design."""
    design = result.model.design
    notes = [m for m in result.messages if m not in design.messages] if not result.converged \
        else [m for m in result.messages if m.startswith("boundary (singular) fit")]
    for message in tuple(design.warnings) + tuple(notes):
        warnings.warn(message, ConvergenceWarning, stacklevel=3)


def fit(formula: str, data: pd.DataFrame, family: str | Family = "gaussian",
        method: str | None = None, link: str | None = None, **kwargs) -> FitResult:
    """Build a :class:`Model` and fit it in one call.

    Keyword arguments ``categorical``, ``levels`` and ``weights`` go to the model; the rest
    are method options (e.g. ``agq_points``).
    """
    model_kw = {k: kwargs.pop(k) for k in MODEL_KEYWORDS if k in kwargs}
    return Model(formula, data, family, link, **model_kw).fit(method, **kwargs)
