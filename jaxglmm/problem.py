"""A design on the device: the arrays every fitter takes, and the static structure beside them.

``ProblemArrays`` is a pytree of arrays whose shapes are fixed by the design (n, p, levels), so
a fit is a pure function of it and ``fit_many`` can stack same-shape datasets on a leading
axis and ``vmap``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from .design import Design
from .resystem import ReStructure, build_structure


class ProblemArrays(NamedTuple):
    y: jnp.ndarray
    X: jnp.ndarray
    offset: jnp.ndarray
    weights: jnp.ndarray
    trials: jnp.ndarray
    index: tuple
    Z: tuple


def problem_from_design(design: Design) -> tuple[ReStructure, ProblemArrays]:
    structure, index, Z = build_structure(design.terms)
    trials = design.trials if design.trials is not None else np.ones_like(design.y)
    arrays = ProblemArrays(
        y=jnp.asarray(design.y, jnp.float64),
        X=jnp.asarray(design.X, jnp.float64),
        offset=jnp.asarray(design.offset, jnp.float64),
        weights=jnp.asarray(design.weights, jnp.float64),
        trials=jnp.asarray(trials, jnp.float64),
        index=tuple(jnp.asarray(i, jnp.int32) for i in index),
        Z=tuple(jnp.asarray(z, jnp.float64) for z in Z),
    )
    return structure, arrays
