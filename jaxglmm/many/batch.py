"""One model, many same-shape datasets, one compiled call.

The fit is a pure function of a :class:`~jaxglmm.core.problem.ProblemArrays` whose shapes are
fixed by the design, so datasets of the same shape are stacked on a leading axis, ``vmap``-ed,
and (where several devices are present) sharded across them.  Likelihood methods only: a
batched Bayesian fit does not exist yet, so nuts, vi and map are refused rather than run as
something else.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..bayes.drivers import BAYES_METHODS
from ..core.problem import ProblemArrays
from ..families import Family
from ..fit import likelihood
from ..fit.cache import relieve_map_pressure
from ..fit.likelihood import RawFit
from ..model import MODEL_KEYWORDS, Model
from ..results.build import likelihood_result


@dataclass(frozen=True)
class ManyFits:
    """Results of :func:`fit_many`, one row per dataset.

    ``fits[i]`` (or ``fits.result(i)``) gives the full :class:`~jaxglmm.results.FitResult` of
    dataset ``i``.
    """

    models: tuple
    method: str
    options: dict
    raw: RawFit
    seconds: float
    responses: np.ndarray | None = None     # refit_many: one response per row

    def __len__(self) -> int:
        return int(np.shape(self.raw.loglik)[0])

    def _row(self, i) -> RawFit:
        return jax.tree.map(lambda v: np.asarray(v)[i], self.raw)

    def result(self, i: int):
        model = self.models[i] if len(self.models) > 1 else self.models[0]
        if self.responses is not None:
            model = model.with_response(self.responses[i])
        return likelihood_result(model, model.problem, self.method, self.options, self._row(i),
                                 self.seconds / len(self))

    __getitem__ = result

    @property
    def fixef(self) -> pd.DataFrame:
        names = list(self.models[0].design.fixef_names)
        return pd.DataFrame(np.asarray(self.raw.beta), columns=names)

    @property
    def loglik(self) -> np.ndarray:
        return np.asarray(self.raw.loglik)

    @property
    def theta(self) -> np.ndarray:
        return np.asarray(self.raw.theta)

    @property
    def converged(self) -> np.ndarray:
        return np.array([self.result(i).converged for i in range(len(self))])


def _stack(arrays: Sequence[ProblemArrays]) -> ProblemArrays:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *arrays)


def _shard(tree):
    devices = jax.devices()
    n = jax.tree.leaves(tree)[0].shape[0]
    if len(devices) < 2 or n % len(devices):
        return tree
    mesh = Mesh(np.array(devices), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return jax.device_put(tree, sharding)


def _check_same_shape(models: Sequence[Model]) -> None:
    ref = models[0]
    for k, m in enumerate(models[1:], start=1):
        if m.structure != ref.structure:
            raise ValueError(f"dataset {k} has a different random-effect structure (levels per "
                             "grouping factor) from dataset 0; fit_many needs same-shape datasets")
        if m.design.fixef_names != ref.design.fixef_names:
            raise ValueError(f"dataset {k} has fixed-effect columns {m.design.fixef_names}, "
                             f"dataset 0 has {ref.design.fixef_names}")
        if m.design.nobs != ref.design.nobs:
            raise ValueError(f"dataset {k} has {m.design.nobs} usable rows, dataset 0 has "
                             f"{ref.design.nobs}; fit_many needs the same number of rows")


def fit_many(formula: str, datasets: Sequence[pd.DataFrame], family: str | Family = "gaussian",
             method: str | None = None, link: str | None = None, **kwargs) -> ManyFits:
    """Fit one model to many same-shape datasets in one compiled, vmapped call.

    Examples
    --------
    >>> fits = jg.fit_many("y ~ x + (1 | g)", datasets, family="bernoulli")
    >>> fits.fixef.mean()
    """
    model_kw = {k: kwargs.pop(k) for k in MODEL_KEYWORDS if k in kwargs}
    _refuse_bayes(method)
    models = [Model(formula, d, family, link, **model_kw) for d in datasets]
    if not models:
        raise ValueError("fit_many needs at least one dataset")
    _check_same_shape(models)
    return _run_many(models, method, kwargs, _stack([m.arrays for m in models]))


def refit_many(model: Model, responses: np.ndarray, method: str | None = None, **options) -> ManyFits:
    """Refit ``model`` to many responses (rows of ``responses``, shape (B, n)) with the same
    design: parametric bootstrap, power and simulation studies (lme4's ``refit``)."""
    _refuse_bayes(method)
    Y = np.asarray(responses, float)
    if Y.ndim != 2 or Y.shape[1] != model.design.nobs:
        raise ValueError(f"responses must have shape (B, {model.design.nobs}), got {Y.shape}")
    for row in Y:
        model.family.validate(row, model.design.trials)
    B = Y.shape[0]
    arrays = jax.tree.map(lambda v: jnp.broadcast_to(v, (B,) + v.shape), model.arrays)
    arrays = arrays._replace(y=jnp.asarray(Y))
    return _run_many([model], method, options, arrays, responses=Y)


def _refuse_bayes(method: str | None) -> None:
    if method is not None and method.lower() in BAYES_METHODS:
        raise ValueError(f"method {method!r} cannot be batched yet: fit_many and refit_many "
                         "run likelihood fits (reml, ml, laplace, agq); fit each dataset with "
                         f"Model(...).fit({method.lower()!r}) instead")


def _run_many(models, method, options, arrays, responses=None) -> ManyFits:
    relieve_map_pressure()
    model = models[0]
    method, options = model.resolve_method(method, options)
    B = arrays.y.shape[0]
    phi_start = model.problem.starts[1]
    phi0 = jnp.stack([m.problem.starts[1] for m in models]) if len(models) > 1 else \
        jnp.broadcast_to(phi_start, (B,) + phi_start.shape)
    start = time.perf_counter()
    raw = likelihood.run(model.problem, method, options, _shard(arrays), phi0=_shard(phi0),
                         many=True)
    raw = jax.device_get(raw)
    return ManyFits(tuple(models), method, dict(options), raw, time.perf_counter() - start,
                    responses)
