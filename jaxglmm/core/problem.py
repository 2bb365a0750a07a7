"""A design on the device: the arrays every fitter takes, and the static structure beside them.

``ProblemArrays`` is a pytree of arrays whose shapes are fixed by the design (n, p, levels), so
a fit is a pure function of it and ``fit_many`` can stack same-shape datasets on a leading
axis and ``vmap``.  ``Problem`` is the plain value a fitter is handed: the static structure,
the family, the arrays, the design they came from and the few flags fitters need.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from functools import cached_property
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..design import Design
from ..families import Family
from .lazy import Deferred, LazyField
from .restructure import ReStructure, build_structure

# From this many rows on, run time dominates compile time: fits are compiled with XLA's
# full optimizations (see jaxglmm.fit.likelihood).
LARGE_N = 20_000


class ProblemArrays(NamedTuple):
    y: jnp.ndarray
    X: jnp.ndarray
    offset: jnp.ndarray
    weights: jnp.ndarray
    trials: jnp.ndarray
    index: tuple
    Z: tuple


@dataclass(frozen=True, eq=False)
class Problem:
    """Everything a fitter needs, as one value.

    structure: the static random-effect structure (hashable; part of compiled programs' keys).
    family: the :class:`~jaxglmm.families.Family` (a value: hashable).
    arrays: the device arrays (put on the device when first read: a fit runs its padded
        host copy, :func:`host_arrays`).
    design: the :class:`~jaxglmm.design.Design` the arrays came from (names, levels, y).
    phi0: the family parameters' unconstrained starting values.
    """

    structure: ReStructure
    family: Family
    arrays: ProblemArrays = LazyField()      # a Deferred device_put until first read
    design: Design
    phi0: np.ndarray

    @property
    def exact_lmm(self) -> bool:
        """A linear mixed model: fitted exactly by REML/ML (gaussian, identity link)."""
        return bool(self.family.exact_lmm)

    @property
    def large(self) -> bool:
        return self.design.nobs >= LARGE_N

    @cached_property
    def starts(self) -> tuple[np.ndarray, np.ndarray]:
        """(theta, phi) starting values (float64 host arrays: a program takes them as they
        are)."""
        return (np.asarray(self.structure.theta_init(), np.float64),
                np.asarray(self.phi0, np.float64))

    @property
    def n_phi(self) -> int:
        return int(np.size(self.phi0))

    def with_response(self, y) -> "Problem":
        """The same problem with another response vector (lme4's ``refit``)."""
        y = np.asarray(y, float)
        return replace(self, design=replace(self.design, y=y),
                       arrays=self.arrays._replace(y=jnp.asarray(y)))

    @property
    def n_params(self) -> int:
        """Estimated parameters: fixed effects, covariance parameters, family parameters."""
        return int(self.design.n_fixef + self.structure.n_theta + self.n_phi)


def make_problem(design: Design, family) -> Problem:
    """The problem of a model's assembled design (:func:`jaxglmm.design.model_design`): the
    random-effect structure built from its terms, with its linear predictors (channels), and
    its arrays on the device."""
    structure, index, Z = build_structure(design.terms, design.n_channels,
                                          design.fixef_channels)
    trials = design.trials if design.trials is not None else np.ones_like(design.y)
    host = _host_arrays(design, design.y, design.weights, trials, index, Z)
    phi0 = np.asarray(family.init_params(design.y, design.trials), np.float64)
    problem = Problem(structure, family, Deferred(_on_device, host), design, phi0)
    _HOST[problem] = host
    return problem


# The host copy of a problem's arrays, where make_problem made them: a fit's padded arrays are
# built from it without a transfer back.  Keyed by the problem object, so a problem made by
# ``replace`` (other arrays) never sees another's.
_HOST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def host_arrays(problem: Problem) -> ProblemArrays:
    """The problem's arrays as NumPy arrays (the copy make_problem kept, else fetched once)."""
    host = _HOST.get(problem)
    if host is None:
        host = _HOST[problem] = jax.device_get(problem.arrays)
    return host


def prediction_arrays(design: Design) -> ProblemArrays:
    """The arrays of a design rebuilt for new data (:func:`jaxglmm.design.new_design`): X,
    offset, trials and each grouping factor's index and Z (none when the design has no
    terms), in the model's factor order; y and the weights are placeholders (ones)."""
    index, Z = (), ()
    if design.terms:
        _, index, Z = build_structure(design.terms)
    ones = np.ones(design.X.shape[0])
    trials = ones if design.trials is None else design.trials
    return _on_device(_host_arrays(design, ones, ones, trials, index, Z))


def _on_device(host: ProblemArrays) -> ProblemArrays:
    """``host`` on the device in one transfer, as concrete arrays even where first read
    inside a trace (a ``fit_fn`` under ``jit``: there ``device_put`` would give tracers, and
    the problem would keep them).  (``jnp.asarray`` of a NumPy array without a dtype
    compiles a copy program per new shape in jax 0.10, about 10 ms each; one ``device_put``
    of the whole tree compiles nothing.)"""
    with jax.ensure_compile_time_eval():
        return jax.device_put(host)


def _host_arrays(design: Design, y, weights, trials, index, Z) -> ProblemArrays:
    f64 = lambda v: np.asarray(v, np.float64)       # noqa: E731
    return ProblemArrays(
        y=f64(y), X=f64(design.X), offset=f64(design.offset), weights=f64(weights),
        trials=f64(trials), index=tuple(np.asarray(i, np.int32) for i in index),
        Z=tuple(f64(z) for z in Z))
