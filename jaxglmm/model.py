"""The user-facing pipeline: formula -> design -> log-density -> fit -> result.

``Model`` holds the immutable design and its device arrays; ``Model.fit`` dispatches to the
fitters, and the compiled fit functions are cached by structure, family and shapes, so a second
dataset of the same shape does not recompile (``fit_many`` vmaps the same functions).
"""
from __future__ import annotations

import time
from dataclasses import replace
from functools import lru_cache, partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from . import resystem as rs
from .convergence import judge
from .design import Design
from .cache import relieve_map_pressure
from .families import Family, get_family
from . import channels
from . import dpars as dpar_mod
from . import families_categorical  # noqa: F401  (registers the family)
from .laplace import fit_glmm, fixed_predictor
from .lmm import fit_lmm
from .problem import ProblemArrays, problem_from_design
from .result import FitResult
from .varcorr import varcorr_frame

MODEL_KEYWORDS = ("categorical", "levels", "weights", "dpars")
METHODS = ("reml", "ml", "laplace", "agq", "map", "vi", "nuts")
BAYES = ("map", "vi", "nuts")
# Compile with XLA's backend optimizations off: the fit graphs are many small ops in loops,
# where optimization level 0 halves compile time and changes run time little (measured on
# sleepstudy: 2.2 s vs 3.5 s cold, 1.0 ms vs 0.7 ms warm).
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def _lmm(arrays, theta0, structure, reml):
    return fit_lmm(structure, arrays, reml, theta0)


def _glmm(arrays, phi0, structure, family, n_agq):
    return fit_glmm(structure, family, arrays, phi0, n_agq=n_agq)


# Small problems compile at optimization level 0; from LARGE_N rows on, run time dominates
# and XLA's fusion pays (200k-row bernoulli, (1 + x | g): 29 s vs 79 s warm).
LARGE_N = 20_000
_lmm_compiled = partial(jax.jit, static_argnames=("structure", "reml"),
                        compiler_options=COMPILER_OPTIONS)(_lmm)
_glmm_compiled = partial(jax.jit, static_argnames=("structure", "family", "n_agq"),
                         compiler_options=COMPILER_OPTIONS)(_glmm)
_lmm_compiled_large = partial(jax.jit, static_argnames=("structure", "reml"))(_lmm)
_glmm_compiled_large = partial(jax.jit, static_argnames=("structure", "family", "n_agq"))(_glmm)


# The batched fits keep XLA's default optimizations: fusing the vmapped elementwise work
# matters there (sleepstudy bootstrap, 200 refits: 0.9 s vs 3.3 s at level 0).
@partial(jax.jit, static_argnames=("structure", "reml"))
def _lmm_many(arrays, theta0, structure, reml):
    return jax.vmap(lambda a: fit_lmm(structure, a, reml, theta0))(arrays)


@partial(jax.jit, static_argnames=("structure", "family", "n_agq"))
def _glmm_many(arrays, phi0, structure, family, n_agq):
    return jax.vmap(lambda a, p: fit_glmm(structure, family, a, p, n_agq=n_agq))(arrays, phi0)


@lru_cache(maxsize=None)
def _named_family(name: str, link: str | None) -> Family:
    # One Family object per (name, link): the compiled fits take the family as a static
    # argument, and a fresh object (new closures) would force a recompile per model.
    return get_family(name, link)


def _build_design(formula, data, family, categorical, levels, weights) -> Design:
    from .design import build_design
    return build_design(formula, data, family, categorical=categorical, levels=levels,
                        weights=weights)


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
        zero-inflation probability (brms's ``zi ~ ...``); see :mod:`jaxglmm.dpars`.

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
        self.family = (_named_family(family, link) if isinstance(family, str)
                       else get_family(family, link))
        build = lambda f, d: _build_design(f, d, self.family, tuple(categorical), levels, weights)
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
        self.design = design
        structure, self.arrays = problem_from_design(design)
        self.structure = replace(structure, n_channels=self.n_channels,
                                 fixef_channels=fixef_channels)

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
                   random_effects: bool = True):
        """X, offset and per-design-term (group index, Z) for new data, in this model's
        (possibly expanded) columns and term order."""
        def rebuilt(design: Design) -> Design:
            nd = design.new_data(data, allow_new_levels=allow_new_levels,
                                 random_effects=random_effects)
            terms = tuple(replace(t, group_index=n.group_index, Z=n.Z)
                          for t, n in zip(design.terms, nd.terms)) if random_effects else ()
            return replace(design, X=nd.X, offset=nd.offset, terms=terms)
        extra = rebuilt(self._extra) if self._extra is not None else None
        design, _, _ = self._assemble(rebuilt(self._main), extra)
        return design.X, design.offset, [(t.group_index, t.Z) for t in design.terms]

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
        return "reml" if self._exact_gaussian() else "laplace"

    def _exact_gaussian(self) -> bool:
        return self.family.name == "gaussian" and self.family.link.name == "identity"

    def check_method(self, method: str, options: dict) -> str:
        method = method.lower()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
        if method in BAYES:
            from .bayes_fit import check_options
            check_options(method, options)
            return method
        if method in ("reml", "ml") and not self._exact_gaussian():
            raise ValueError(f"method {method!r} is for gaussian models with the identity link; "
                             f"use 'laplace' or 'agq' for family {self.family.name!r}")
        if method == "agq":
            if self._exact_gaussian():
                raise ValueError("method 'agq' is for non-gaussian families; the gaussian "
                                 "likelihood is exact with 'ml' or 'reml'")
            s = self.structure
            if len(s.factors) != 1 or s.factors[0].q != 1:
                raise ValueError("method 'agq' needs a single grouping factor with one scalar "
                                 "random effect (as lme4's nAGQ > 1); use 'laplace'")
            n = int(options.get("agq_points", 25))
            if n < 1:
                raise ValueError("agq_points must be a positive integer")
        unknown = set(options) - ({"agq_points"} if method == "agq" else set())
        if unknown:
            raise ValueError(f"unknown option(s) for method {method!r}: {sorted(unknown)}")
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
            from .bayes_fit import fit_bayes
            return fit_bayes(self, method, options)
        start = time.perf_counter()
        raw = jax.device_get(self._run(method, options, self.arrays, many=False))
        seconds = time.perf_counter() - start
        return self._result(method, options, raw, seconds)

    def _phi0(self):
        d = self.design
        return jnp.asarray(self.family.init_params(d.y, d.trials), jnp.float64)

    def _run(self, method, options, arrays, many: bool, phi0=None):
        s = self.structure
        large = self.design.nobs >= LARGE_N
        if method in ("reml", "ml") or (method == "laplace" and self._exact_gaussian()):
            fn = _lmm_many if many else (_lmm_compiled_large if large else _lmm_compiled)
            return fn(arrays, jnp.asarray(s.theta_init()), structure=s, reml=(method == "reml"))
        n_agq = int(options.get("agq_points", 25)) if method == "agq" else 1
        fn = _glmm_many if many else (_glmm_compiled_large if large else _glmm_compiled)
        if phi0 is None:
            phi0 = self._phi0()
        return fn(arrays, phi0, structure=s, family=self.family, n_agq=n_agq)

    def _result(self, method, options, raw, seconds) -> FitResult:
        d, s, fam = self.design, self.structure, self.family
        gaussian_exact = "sigma" in raw
        sigma = float(raw["sigma"]) if gaussian_exact else None
        theta = canonical_theta(s, np.asarray(raw["theta"], float))
        fparams = {} if gaussian_exact else {
            k: np.asarray(v) for k, v in fam.natural_params(jnp.asarray(raw["family_params"])).items()}
        if fam.name == "gaussian" and not gaussian_exact:
            sigma = float(fparams.pop("sigma"))
        names = list(d.fixef_names)
        vcov = pd.DataFrame(np.asarray(raw["vcov"]), index=names, columns=names)
        fixef = pd.Series(np.asarray(raw["beta"], float), index=names, name="fixef")
        se = pd.Series(np.sqrt(np.diag(vcov.to_numpy())), index=names, name="fixef_se")
        # Exact gaussian: Lambda is relative to sigma (lme4).  Otherwise Lambda is absolute and
        # a gaussian family's sigma (non-identity link) is one of the family parameters.
        vc = varcorr_frame(s, theta, sigma if gaussian_exact else None)
        if not gaussian_exact and sigma is not None:
            vc.loc[len(vc)] = ("Residual", None, None, sigma ** 2, sigma)
        verdict = judge(int(raw["status"]), raw["grad"], raw["hessian"], theta,
                        s.theta_diagonal(), int(raw["n_iter"]))
        messages = tuple(d.messages) + verdict.messages
        n_family = 1 if gaussian_exact else int(np.size(raw["family_params"]))
        n_params = d.n_fixef + s.n_theta + n_family
        b_terms, ranef = self._ranef(raw)
        fparams_se = {} if gaussian_exact else _family_params_se(
            fam, raw, s.n_theta + d.n_fixef, drop_sigma=fam.name == "gaussian")
        return FitResult(model=self, method=method, fixef=fixef, fixef_se=se, vcov=vcov,
                         varcorr=vc, sigma=sigma, family_params=fparams,
                         family_params_se=fparams_se,
                         loglik=float(raw["loglik"]), df=n_params, ranef=ranef,
                         converged=verdict.converged, singular=verdict.singular,
                         messages=messages, seconds=seconds, theta=theta,
                         n_iter=int(raw["n_iter"]), b=tuple(b_terms), options=dict(options),
                         optinfo=self._optinfo(raw))

    @staticmethod
    def _optinfo(raw) -> dict:
        keys = ("x", "grad", "hessian", "n_iter", "status", "objective0", "deviance", "u")
        info = {k: np.asarray(raw[k]) for k in keys if k in raw}
        info["objective"] = info.pop("deviance")
        return info

    def _ranef(self, raw):
        """Per design term (levels, q) modes, and per group a DataFrame with conditional SDs."""
        s = self.structure
        b_terms, frames = [], {}
        by_label = {}
        for f, b, cov in zip(s.factors, raw["b"], raw["b_cov"]):
            b = np.asarray(b)
            sd = np.sqrt(np.clip(np.diagonal(np.asarray(cov), axis1=1, axis2=2), 0, None))
            for t in f.terms:
                by_label[(t.label, t.names)] = (b[:, t.col0:t.col0 + t.q], sd[:, t.col0:t.col0 + t.q])
        for t in self.design.terms:
            bt, sdt = by_label[(t.label, tuple(t.names))]
            b_terms.append(bt)
            frame = frames.setdefault(t.group, pd.DataFrame(index=pd.Index(t.levels, name="level")))
            for k, name in enumerate(t.names):
                frame[name] = bt[:, k]
                frame[f"{name}_sd"] = sdt[:, k]
        return b_terms, frames


def joint_log_density(structure, family: Family, a: ProblemArrays, params: dict) -> jnp.ndarray:
    """``log p(y, u | beta, theta, phi)`` for one dataset's arrays (see Model.log_density)."""
    lams = rs.lambdas(structure, params["theta"])
    eta = fixed_predictor(structure, a, params["beta"]) + \
        rs.re_linear_predictor(structure, lams, params["u"], a.index, a.Z)
    fp = family.natural_params(params["phi"])
    ll = jnp.sum(a.weights * family.loglik(a.y, eta, a.trials, fp))
    u = params["u"]
    return ll - 0.5 * jnp.dot(u, u) - 0.5 * u.shape[0] * jnp.log(2 * jnp.pi)


def _family_params_se(fam: Family, raw, start: int, drop_sigma: bool) -> dict:
    """Standard errors of the natural family parameters (thresholds, shape, ...): the delta
    method on the inverse Hessian of the deviance in the outer vector (theta, beta, phi), as
    ordinal::clmm and glmmTMB report them.  NaN where that Hessian is not positive definite."""
    phi = jnp.asarray(raw["family_params"])
    if phi.shape[0] == 0:
        return {}
    H = np.asarray(raw["hessian"], float)
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
    if drop_sigma:
        out.pop("sigma", None)
    return out


def canonical_theta(structure, theta: np.ndarray) -> np.ndarray:
    """theta with every Cholesky column's diagonal made non-negative, as lme4 reports it
    (``Lambda`` and ``Lambda D`` with D = diag(+-1) give the same covariance)."""
    theta = theta.copy()
    for t in structure.terms:
        rows, cols = np.array(t.theta_rows), np.array(t.theta_cols)
        vals = theta[t.theta_start:t.theta_start + t.n_theta]
        for c in np.unique(cols):
            diag = vals[(rows == c) & (cols == c)]
            if diag.size and diag[0] < 0:
                vals[cols == c] *= -1
        theta[t.theta_start:t.theta_start + t.n_theta] = vals
    return theta


def fit(formula: str, data: pd.DataFrame, family: str | Family = "gaussian",
        method: str | None = None, link: str | None = None, **kwargs) -> FitResult:
    """Build a :class:`Model` and fit it in one call.

    Keyword arguments ``categorical``, ``levels`` and ``weights`` go to the model; the rest
    are method options (e.g. ``agq_points``).
    """
    model_kw = {k: kwargs.pop(k) for k in MODEL_KEYWORDS if k in kwargs}
    return Model(formula, data, family, link, **model_kw).fit(method, **kwargs)
