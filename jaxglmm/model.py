"""The user-facing pipeline: formula -> design -> log-density -> fit -> result.

``Model`` holds the immutable design and its :class:`~jaxglmm.core.problem.Problem` (the plain
value every fitter is handed); ``Model.fit`` checks the method, runs the likelihood or
Bayesian fitter on the problem and hands the raw fit to the one result builder.  Compiled
programs are cached by structure, family and shapes (:mod:`jaxglmm.fit.cache`), so a second
dataset of the same shape does not recompile (``fit_many`` vmaps the same functions).
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import replace
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .bayes.drivers import BAYES_METHODS, check_options, run_bayes
from .core.predictor import joint_log_density
from .core.problem import Problem, ProblemArrays, make_problem, problem_arrays
from .core.resystem import build_structure
from .design import Design, build_design, channels, check_identifiable
from .formula import parse_formula, term_key
from .design import dpars as dpar_mod
from .families import Family, get_family
from .fit import likelihood
from .fit.cache import relieve_map_pressure
from .fit.convergence import ConvergenceWarning
from .results.build import likelihood_result, posterior_result
from .results.result import FitResult
from .results import extensions

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
        self.weights = weights
        categorical = column_list(categorical, "categorical")
        # what a related model needs to be built the same way (inference: null models, power)
        self.data = data
        self.options = {"family": family, "link": link, "categorical": tuple(categorical),
                        "levels": levels, "weights": weights, "dpars": dpars}
        self.data_name = data.attrs.get("name") or \
            f"DataFrame ({data.shape[0]} rows, {data.shape[1]} columns)"
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
        for part in (main, self._extra):
            if part is not None:
                check_identifiable(part, self.family)
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
                   random_effects=True) -> ProblemArrays:
        """The model's arrays for new data (X, offset and, with ``random_effects``, each
        grouping factor's index and Z), in this model's (possibly expanded) columns and
        factor order; y, weights and trials are placeholders.  ``random_effects`` may be a
        set of terms from :meth:`re_terms`: only their columns are read, the others get
        no effect (index -1)."""
        def rebuilt(design: Design, part: int) -> Design:
            labels = None if random_effects in (True, "all") or not random_effects else \
                frozenset(label for p, label in random_effects if p == part)
            nd = design.new_data(data, allow_new_levels=allow_new_levels,
                                 random_effects=bool(random_effects), labels=labels)
            terms = tuple(replace(t, group_index=n.group_index, Z=n.Z)
                          for t, n in zip(design.terms, nd.terms)) if random_effects else ()
            return replace(design, X=nd.X, offset=nd.offset, terms=terms, trials=nd.trials)
        extra = rebuilt(self._extra, 1) if self._extra is not None else None
        design, _, _ = self._assemble(rebuilt(self._main, 0), extra)
        n = design.X.shape[0]
        index, Z = (), ()
        if random_effects:
            _, index, Z = build_structure(design.terms)
            index = tuple(jnp.asarray(i, jnp.int32) for i in index)
            Z = tuple(jnp.asarray(z, jnp.float64) for z in Z)
        ones = jnp.ones(n)
        trials = design.trials
        if self.design.proportion and self.weights in data:    # prop ~ ..., weights = trials
            trials = np.asarray(data[self.weights], float)
        return ProblemArrays(y=ones, X=jnp.asarray(design.X, jnp.float64),
                             offset=jnp.asarray(design.offset, jnp.float64), weights=ones,
                             trials=ones if trials is None else jnp.asarray(trials, jnp.float64),
                             index=index, Z=Z)

    def with_response(self, y) -> "Model":
        """The same model with another response vector (same design otherwise): what a
        refit of it describes (lme4's ``refit``)."""
        y = np.asarray(y, float)
        other = copy.copy(self)
        design = replace(self.design, y=y)
        other.problem = replace(self.problem, design=design,
                                arrays=self.problem.arrays._replace(y=jnp.asarray(y)))
        return other

    def _specs(self):
        return [d.spec for d in (self._main, self._extra) if d is not None]

    def re_term_sizes(self) -> list[list[tuple[str, int, str]]]:
        """Per formula part (the main formula, then a parameter formula's), each random
        term's (grouping factor, number of columns, the term as written) in lme4's order:
        what lme4's identifiability checks read (``fit_many`` checks each dataset with
        :func:`jaxglmm.design.identifiability_problem`)."""
        return [[(t.factor.name, t.matrix.values.shape[1], t.source) for t in spec.terms]
                for spec in self._specs()]

    def used_columns(self, random_effects=True) -> list[str]:
        """The data columns a prediction reads: fixed effects, offsets and the random terms
        ``random_effects`` names (True or ``"all"``: every one; a set from
        :meth:`re_terms`: those; False or None: none) with their grouping factors."""
        cols = []
        for part, spec in enumerate(self._specs()):
            cols += list(spec.fixed.columns) + [n for o in spec.offsets for n in o.names]
            for t in spec.terms:
                if _selected(random_effects, part, t.label):
                    cols += list(t.matrix.columns) + list(t.factor.columns)
        return list(dict.fromkeys(cols))

    def group_labels(self, data: pd.DataFrame) -> list[np.ndarray]:
        """Each grouping factor's level labels in ``data`` (in the model's factor order)."""
        factors = {t.factor.name: t.factor for spec in self._specs() for t in spec.terms}
        frame = data.reset_index(drop=True)
        return [factors[f.group].labels(frame) for f in self.structure.factors]

    def re_terms(self, re_form):
        """Which random-effect terms a prediction conditions on, as lme4's ``re.form``:
        ``"all"`` for None; None (no random effects) for ``"~0"``, ``NA`` or ``"~1"``; for
        a formula of random terms, e.g. ``"~(1 | LOCATION)"``, the set of those terms as
        (formula part, label): part 1 is a parameter formula's (``zi ~ ...``)."""
        if re_form is None:
            return "all"
        if re_form is pd.NA or (isinstance(re_form, float) and np.isnan(re_form)):
            return None
        if not isinstance(re_form, str):
            raise TypeError(f"re_form must be None, NA or a formula string, got {re_form!r}")
        text = re_form.strip()
        if text in ("NA", "0", "~0", "~ 0") or text.replace(" ", "") in ("~0", "~1-1", "~-1+1"):
            return None
        if not text.startswith("~"):
            raise ValueError(f"re_form must be a one-sided formula such as '~(1 | g)', "
                             f"'~0' or None; got {re_form!r}")
        parsed = parse_formula("re_form_response " + text)
        if parsed.fixed or parsed.offsets:
            raise ValueError(f"re_form {re_form!r} may hold only random-effect terms "
                             "('(... | group)'), as lme4's re.form")
        if not parsed.random:
            return None
        key = lambda terms, intercept, group: (tuple(group), bool(intercept),
                                               frozenset(term_key(t) for t in terms))
        # terms are told apart by (formula, label): a parameter formula's terms (part 1, the
        # model's linear predictor 1) may carry the same labels as the main formula's
        labels = {}
        for part, spec in enumerate(self._specs()):
            for t in spec.terms:
                labels.setdefault(key(t.matrix.terms, t.matrix.intercept, t.factor.columns),
                                  set()).add((part, t.label))
        chosen = set()
        for r in parsed.random:
            found = labels.get(key(r.terms, r.intercept, r.group))
            if not found:
                known = ", ".join(spec.parsed.random[i].source for spec in self._specs()
                                  for i in range(len(spec.parsed.random)))
                raise ValueError(f"re_form term {r.source} is not a random-effect term of "
                                 f"the model (its terms: {known})")
            chosen |= found
        return frozenset(chosen)

    def re_masks(self, chosen) -> tuple | None:
        """Per grouping factor a 0/1 mask over its columns: those of the terms ``chosen``
        (:meth:`re_terms`) are 1; None when no random effect is chosen."""
        s = self.structure
        if chosen is None:
            return None
        if chosen == "all":
            return tuple(np.ones(f.q) for f in s.factors)
        part_of = (lambda channel: int(channel == 1)) if self._extra is not None else \
            (lambda channel: 0)
        masks = []
        for f in s.factors:
            label = [t.label for t in f.terms for _ in range(t.q)]
            masks.append(np.array([1.0 if (part_of(c), lab) in chosen else 0.0
                                   for c, lab in zip(f.channels, label)]))
        return tuple(masks)

    def re_selection(self, re_form) -> tuple | None:
        """:meth:`re_masks` of :meth:`re_terms`."""
        return self.re_masks(self.re_terms(re_form))

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

    # kept for scripts and tests written against the first releases
    def _exact_gaussian(self) -> bool:
        return self.problem.exact_lmm

    def _phi0(self):
        return self.problem.starts[1]

    def resolve_method(self, method: str | None, options: dict) -> tuple[str, dict]:
        """The method and its options, checked, with lme4's spellings mapped: ``REML=True``
        / ``REML=False`` are ``method="reml"`` / ``"ml"``; ``nAGQ=1`` is ``"laplace"`` and
        ``nAGQ=n`` is ``"agq"`` with ``agq_points=n``.  A spelling that contradicts
        ``method``, or one that has no jaxglmm meaning, is refused naming the right one."""
        options = dict(options)
        if "REML" in options:
            reml = options.pop("REML")
            if not isinstance(reml, (bool, np.bool_)):
                raise TypeError(f"REML must be True or False, got {reml!r}")
            if not self.problem.exact_lmm:
                raise ValueError(f"REML applies to gaussian models with the identity link; "
                                 f"this {self.family.name} model is fitted by method='laplace' "
                                 "or 'agq' (lme4's glmer has no REML either)")
            wanted = "reml" if reml else "ml"
            if method is not None and method.lower() != wanted:
                raise ValueError(f"REML={reml} contradicts method={method!r}; "
                                 f"write method={wanted!r}")
            method = wanted
        if "nAGQ" in options:
            n = options.pop("nAGQ")
            if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
                raise ValueError(f"nAGQ must be a whole number >= 1, got {n!r}")
            if n == 0:
                raise ValueError("nAGQ=0 (lme4's fast approximation with fixed effects in "
                                 "PIRLS) is not available; use nAGQ=1 (method='laplace')")
            wanted = "laplace" if n == 1 else "agq"
            if method is not None and method.lower() != wanted:
                raise ValueError(f"nAGQ={n} contradicts method={method!r}; write "
                                 f"method={wanted!r}" + (f", agq_points={n}" if n > 1 else ""))
            if n > 1:
                if options.get("agq_points", n) != n:
                    raise ValueError(f"nAGQ={n} contradicts agq_points={options['agq_points']}")
                options["agq_points"] = int(n)
            method = wanted
        return self.check_method(method or self.default_method(), options), options

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
        method, options = self.resolve_method(method, options)
        relieve_map_pressure()
        if method in BAYES:
            result = posterior_result(self, self.problem, method, options,
                                      run_bayes(self.problem, method, options))
        else:
            start = time.perf_counter()
            raw = jax.device_get(likelihood.run(self.problem, method, options))
            result = likelihood_result(self, self.problem, method, options, raw,
                                       time.perf_counter() - start)
            if not np.isfinite(result.loglik):
                raise FloatingPointError(
                    f"the {method} fit ended at a non-finite log-likelihood: no fixed effects "
                    f"were found where every observation has positive likelihood under the "
                    f"{self.family.name} family's {self.family.link.name} link (for example a "
                    "log link whose mean passes 1); try another link")
        warn_of(result)
        return result

    def fit_fn(self, method: str | None = None, **options):
        """The fit as a pure JAX function ``f(y=None, weights=None, offset=None,
        priors=None) -> FitArrays`` (beta, theta, sigma, family_params, loglik, se), to jit,
        vmap and differentiate; derivatives by the implicit function theorem at the
        optimum.  ``method``: ``"ml"``, ``"reml"``, ``"laplace"`` or ``"map"`` (see
        :func:`jaxglmm.inference.implicit.fit_fn`, registered by :mod:`jaxglmm.inference`)."""
        return extensions.call("fit_fn", self, method, **options)


def column_list(value, option: str) -> tuple:
    """A model option naming columns (``categorical``) as a tuple: None means none, and
    one name (a string) is that one column, not its letters."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple, set, frozenset, pd.Index)):
        return tuple(value)
    raise TypeError(f"{option} must be a column name or a list of column names, got "
                    f"{value!r}")


def _selected(random_effects, part: int, label: str) -> bool:
    if random_effects is True or random_effects == "all":
        return True
    if not random_effects:
        return False
    return (part, label) in random_effects


SCALE_RATIO = 1e3      # lme4's checkScaleX tolerance


def scale_message(X: np.ndarray) -> str | None:
    """lme4's ``check.scaleX``: a warning when the non-binary predictors' SDs differ by more
    than a factor 1e3 from each other or from 1."""
    X = np.asarray(X, float)
    cont = [j for j in range(X.shape[1]) if not np.all(np.isin(X[:, j], (0.0, 1.0)))]
    if not cont or X.shape[0] < 2:
        return None
    with np.errstate(divide="ignore"):
        logsd = np.log(np.std(X[:, cont], axis=0, ddof=1))
    spread = np.abs(logsd[:, None] - logsd[None, :])
    if np.any(np.abs(logsd) > np.log(SCALE_RATIO)) or np.any(spread > np.log(SCALE_RATIO)):
        return "Some predictor variables are on very different scales: consider rescaling"
    return None


def warn_of(result: FitResult) -> None:
    """A :class:`ConvergenceWarning` for each problem of a fit, as lme4 warns: not converged
    (the verdict's messages), a singular fit, a confounded design, predictors on very
    different scales."""
    design = result.model.design
    notes = [m for m in result.messages if m not in design.messages] if not result.converged \
        else [m for m in result.messages if m.startswith("boundary (singular) fit")]
    scale = scale_message(design.X)
    for message in tuple(design.warnings) + ((scale,) if scale else ()) + tuple(notes):
        warnings.warn(message, ConvergenceWarning, stacklevel=3)


def fit(formula: str, data: pd.DataFrame, family: str | Family = "gaussian",
        method: str | None = None, link: str | None = None, **kwargs) -> FitResult:
    """Build a :class:`Model` and fit it in one call.

    Keyword arguments ``categorical``, ``levels`` and ``weights`` go to the model; the rest
    are method options (e.g. ``agq_points``).
    """
    model_kw = {k: kwargs.pop(k) for k in MODEL_KEYWORDS if k in kwargs}
    return Model(formula, data, family, link, **model_kw).fit(method, **kwargs)
