"""Fitting methods as values, as families are: one :class:`Method` record per method.

A record holds the method's options (:class:`Option`: name, type, default and one line of
doc each), the attributes the rest of the library asks instead of the method's name, and
its runner, the function that fits a :class:`~jaxglmm.core.problem.Problem` with it.  The
YAML configs (:mod:`jaxglmm.io.config`) build their pydantic models of the options from the
same records.  No code outside this module tests a method's name (tests/test_architecture.py
checks it).

>>> get_method("nuts").settings({"chains": 2})["warmup"]
1000
>>> get_method("reml").bayesian, get_method("reml").reml
(False, True)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping

import numpy as np

from .bayes import drivers
from .core.problem import Problem
from .fit import convergence, likelihood

__all__ = ["Option", "Method", "METHODS", "METHOD_NAMES", "get_method", "default_method",
           "resolve"]


@dataclass(frozen=True)
class Option:
    """One option of a method: ``type`` is a typing annotation (``int``, ``bool | None``,
    ``Literal["a", "b"]``) that the YAML config checks strictly; ``bounds`` are pydantic's
    ``ge``/``gt``/``lt`` constraints on a number."""

    name: str
    type: Any
    default: Any
    doc: str
    bounds: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}),
                                        hash=False)

    def __post_init__(self):
        object.__setattr__(self, "bounds", MappingProxyType(dict(self.bounds)))


@dataclass(frozen=True)
class Method:
    """A fitting method.

    name: as users write it (``method="reml"``).
    title: the summary's first line (``{n}``: the quadrature points).
    options: the :class:`Option` s it takes, in order.
    runner: ``runner(problem, method, settings)`` fits the problem; ``settings`` are the
        options with every default filled in (:meth:`settings`).  Returns a
        :class:`~jaxglmm.fit.likelihood.RawFit`, or a
        :class:`~jaxglmm.bayes.drivers.BayesRun` for a Bayesian method.
    bayesian: draws a posterior (``fit.posterior``) instead of maximizing a likelihood; no
        likelihood-based inference (confint, bootstrap, anova, power) and no batching.
    reml: maximizes the REML criterion (lme4's ``REML = TRUE``).
    exact_lmm_only: needs an exact linear mixed model (gaussian, identity link).
    quadrature: adaptive Gauss-Hermite quadrature (``agq_points``): non-gaussian families
        with one grouping factor and one scalar random effect (lme4's ``nAGQ > 1``).
    implicit: ``Model.fit_fn`` can write the fit as a differentiable JAX function.
    ml_refit: the method that refits by maximum likelihood where this one does not
        (``"ml"`` for ``"reml"``, as lme4's ``refitML``); None when it needs no refit.
    judge: a Bayesian method's verdict, ``judge(rhat_max, diag) -> Verdict``.
    """

    name: str
    title: str
    options: tuple[Option, ...]
    runner: Callable = field(compare=False, repr=False)
    bayesian: bool = False
    reml: bool = False
    exact_lmm_only: bool = False
    quadrature: bool = False
    implicit: bool = False
    ml_refit: str | None = None
    judge: Callable | None = field(default=None, compare=False, repr=False)

    @property
    def batchable(self) -> bool:
        """Whether ``fit_many`` / ``refit_many`` can batch it (the likelihood methods)."""
        return not self.bayesian

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    @property
    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def settings(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` over the defaults: every option the method takes, with a value."""
        return {**self.defaults, **options}

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse option names the method does not take (one line listing what it takes)."""
        unknown = set(options) - set(self.option_names)
        if unknown:
            raise ValueError(f"unknown option(s) for method {self.name!r}: {sorted(unknown)}; "
                             f"allowed: {sorted(self.option_names)}")

    def refusal(self, exact_lmm: bool, family: str) -> str | None:
        """Why a model of ``family`` (an exact LMM or not) cannot use the method, or None;
        what can be said before the data are read."""
        if self.exact_lmm_only and not exact_lmm:
            return (f"method {self.name!r} is for gaussian models with the identity link; use "
                    f"'laplace' or 'agq' for family {family!r}")
        if self.quadrature and exact_lmm:
            return (f"method {self.name!r} is for non-gaussian families; the gaussian "
                    "likelihood is exact with 'ml' or 'reml'")
        return None

    def check(self, problem: Problem, options: Mapping[str, Any]) -> None:
        """Refuse a method the problem cannot use, or options it does not take."""
        message = self.refusal(problem.exact_lmm, problem.family.name)
        if message:
            raise ValueError(message)
        if self.quadrature:
            factors = problem.structure.factors
            if len(factors) != 1 or factors[0].q != 1:
                raise ValueError(f"method {self.name!r} needs a single grouping factor with "
                                 "one scalar random effect (as lme4's nAGQ > 1); use "
                                 "'laplace'")
        self.check_options(options)
        if not self.bayesian:
            likelihood.check_optimizer(problem, self, options.get("optimizer"))
        if self.quadrature and int(self.settings(options)["agq_points"]) < 1:
            raise ValueError("agq_points must be a positive integer")

    def points(self, options: Mapping[str, Any]) -> int:
        """Quadrature points per random effect: ``agq_points`` for a quadrature method,
        1 (the Laplace approximation) otherwise."""
        return int(self.settings(options)["agq_points"]) if self.quadrature else 1

    def heading(self, exact_lmm: bool, options: Mapping[str, Any]) -> str:
        """The summary's title; an ML-criterion likelihood fit of an exact LMM is titled
        as lme4's lmer titles it (Laplace is exact there)."""
        if exact_lmm and not (self.bayesian or self.reml):
            return ML.title
        return self.title.format(n=self.points(options))


# ----------------------------------------------------------------------------- options
_VERBOSE = Option("verbose", bool, False, "print the objective at each evaluation")
_OPTIMIZER = Option("optimizer", Literal["bfgs", "lbfgsb", "cobyqa"] | None, None,
                    "outer optimizer of a single fit: the compiled BFGS, or (the sparse "
                    "crossed LMM) the host's L-BFGS-B or COBYQA; None: the fit's default "
                    "(fit_many and refit_many run the compiled BFGS and refuse another)")
_BAYES_COMMON = (
    Option("draws", int, 1000, "posterior draws kept (per chain)", {"ge": 1}),
    Option("seed", int, 0, "random seed", {"ge": 0}),
    Option("priors", dict[str, str], None,
           "brms-style priors by class or name, e.g. {'b': 'normal(0, 5)'}; None: defaults"),
    Option("init", Literal["centre", "ml"], "centre",
           "start at the prior centre (moved apart per chain) or at the ML fit"),
)
_PROGRESS = Option("progress", bool | None, None,
                   "progress bar; None: only when stderr is a terminal")
_MARGINALIZE = Option("marginalize", bool | None, None,
                      "integrate the random effects out exactly; None: where that is exact")


# ----------------------------------------------------------------------------- runners
def _likelihood(problem: Problem, method: Method, settings: dict):
    return likelihood.run(problem, method, settings)


def _bayes(sampler: Callable, problem: Problem, method: Method, settings: dict):
    return drivers.run_bayes(sampler, problem, settings)


# ----------------------------------------------------------------------------- the table
REML = Method("reml", "Linear mixed model fit by REML", (_VERBOSE, _OPTIMIZER), _likelihood,
              reml=True, exact_lmm_only=True, implicit=True, ml_refit="ml")
ML = Method("ml", "Linear mixed model fit by maximum likelihood", (_VERBOSE, _OPTIMIZER),
            _likelihood,
            exact_lmm_only=True, implicit=True)
LAPLACE = Method("laplace", "Generalized linear mixed model fit by maximum likelihood "
                 "(Laplace Approximation)", (_VERBOSE, _OPTIMIZER), _likelihood,
                 implicit=True)
AGQ = Method("agq", "Generalized linear mixed model fit by maximum likelihood (Adaptive "
             "Gauss-Hermite Quadrature, nAGQ = {n})",
             (Option("agq_points", int, 25, "quadrature points (lme4's nAGQ)", {"ge": 1}),
              _VERBOSE, _OPTIMIZER), _likelihood, quadrature=True)
NUTS = Method(
    "nuts", "Bayesian mixed model fit by NUTS (NumPyro)",
    (Option("chains", int, 4, "Markov chains", {"ge": 1}),
     Option("warmup", int, 1000, "adaptation steps per chain, not kept", {"ge": 0}),
     *_BAYES_COMMON,
     Option("target_accept", float, 0.8, "NUTS's target acceptance rate", {"gt": 0, "lt": 1}),
     Option("max_tree_depth", int, 10, "largest tree depth of a NUTS step", {"ge": 1}),
     Option("chain_method", Literal["parallel", "vectorized"] | None, None,
            "chains across devices or vectorized on one; None: parallel when devices allow"),
     _PROGRESS,
     Option("dense_mass", bool, False, "adapt a dense mass matrix (else diagonal)"),
     _MARGINALIZE),
    partial(_bayes, drivers.run_nuts), bayesian=True, judge=convergence.judge_nuts)
VI = Method(
    "vi", "Bayesian mixed model fit by variational inference (NumPyro SVI)",
    (Option("guide", Literal["meanfield", "lowrank"], "meanfield",
            "independent normals, or a low-rank multivariate normal"),
     Option("steps", int, 20000, "optimizer steps", {"ge": 1}),
     Option("learning_rate", float, 0.01, "Adam's learning rate", {"gt": 0}),
     *_BAYES_COMMON,
     Option("rank", int | None, None, "the low-rank guide's rank; None: sqrt(dimension)",
            {"ge": 1}),
     _PROGRESS, _MARGINALIZE),
    partial(_bayes, drivers.run_vi), bayesian=True, judge=convergence.judge_vi)
MAP = Method(
    "map", "Bayesian mixed model: posterior mode with a Laplace approximation",
    (*_BAYES_COMMON,
     Option("maxiter", int, 500, "optimizer iterations", {"ge": 1}),
     Option("optimizer", Literal["bfgs", "optax"], "optax",
            "the project's BFGS, or optax L-BFGS with its zoom line search")),
    partial(_bayes, drivers.run_map), bayesian=True, implicit=True,
    judge=convergence.judge_map)

#: Every method, in the order they are listed to users.
METHODS: tuple[Method, ...] = (REML, ML, LAPLACE, AGQ, NUTS, VI, MAP)
METHOD_NAMES: tuple[str, ...] = tuple(m.name for m in METHODS)
_BY_NAME = {m.name: m for m in METHODS}


def get_method(method: str | Method) -> Method:
    """The :class:`Method` of a name (any case); a record is returned as it is."""
    if isinstance(method, Method):
        return method
    found = _BY_NAME.get(method.lower()) if isinstance(method, str) else None
    if found is None:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHOD_NAMES)}")
    return found


def default_method(exact_lmm: bool) -> Method:
    """lme4's default: REML for a linear mixed model (``exact_lmm``: gaussian, identity
    link), the Laplace approximation otherwise."""
    return REML if exact_lmm else LAPLACE


def resolve(problem: Problem, method: str | Method | None,
            options: Mapping[str, Any]) -> tuple[Method, dict]:
    """The method and its options, checked against the problem, with lme4's spellings
    mapped: ``REML=True`` / ``REML=False`` are ``method="reml"`` / ``"ml"``; ``nAGQ=1`` is
    ``"laplace"`` and ``nAGQ=n`` is ``"agq"`` with ``agq_points=n``.  A spelling that
    contradicts ``method``, or one that has no jaxglmm meaning, is refused naming the
    right one."""
    options = dict(options)
    chosen = None if method is None else get_method(method)
    if "REML" in options:
        reml = options.pop("REML")
        if not isinstance(reml, (bool, np.bool_)):
            raise TypeError(f"REML must be True or False, got {reml!r}")
        if not problem.exact_lmm:
            raise ValueError(f"REML applies to gaussian models with the identity link; "
                             f"this {problem.family.name} model is fitted by "
                             "method='laplace' or 'agq' (lme4's glmer has no REML either)")
        chosen = _agree(chosen, REML if reml else ML, f"REML={reml}", method)
    if "nAGQ" in options:
        n = options.pop("nAGQ")
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"nAGQ must be a whole number >= 1, got {n!r}")
        if n == 0:
            raise ValueError("nAGQ=0 (lme4's fast approximation with fixed effects in "
                             "PIRLS) is not available; use nAGQ=1 (method='laplace')")
        chosen = _agree(chosen, LAPLACE if n == 1 else AGQ, f"nAGQ={n}", method,
                        f", agq_points={n}" if n > 1 else "")
        if n > 1:
            if options.get("agq_points", n) != n:
                raise ValueError(f"nAGQ={n} contradicts agq_points={options['agq_points']}")
            options["agq_points"] = int(n)
    chosen = chosen or default_method(problem.exact_lmm)
    chosen.check(problem, options)
    return chosen, options


def _agree(chosen: Method | None, wanted: Method, spelling: str, given, extra: str = ""):
    if chosen is not None and chosen is not wanted:
        raise ValueError(f"{spelling} contradicts method={given!r}; write "
                         f"method={wanted.name!r}{extra}")
    return wanted
