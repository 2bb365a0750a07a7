"""Gather and segment-sum: the one place that maps random effects to observations and back.

``b[group]`` (a gather) has a scatter-add as its backward pass; on some GPU builds of jaxlib
(0.10.2 to 0.11.0, jax issue 38806) scatter-add is slow.  Every module goes through these two
functions so the strategy can be swapped here (e.g. a sorted segment-sum, or a one-hot matmul
for few levels) without touching the models.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def gather_levels(values: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
    """Rows of ``values`` (levels, ...) for each observation's level ``index`` (n,).

    An index of -1 (a level unseen in training) gives zeros.
    """
    safe = jnp.where(index < 0, 0, index)
    out = jnp.take(values, safe, axis=0)
    mask = (index >= 0).reshape((-1,) + (1,) * (out.ndim - 1))
    return jnp.where(mask, out, 0.0)


def segment_sum(data: jnp.ndarray, index: jnp.ndarray, num_segments: int) -> jnp.ndarray:
    """Sum rows of ``data`` (n, ...) into ``num_segments`` bins given by ``index`` (n,)."""
    return jax.ops.segment_sum(data, index, num_segments=num_segments)
