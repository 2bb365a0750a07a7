"""Gather and segment-sum: the one place that maps random effects to observations and back.

``b[group]`` (a gather) has a scatter-add as its backward pass; on some GPU builds of jaxlib
(0.10.2 to 0.11.0, jax issue 38806) scatter-add is slow.  Every module goes through these two
functions so the strategy can be swapped here (e.g. a sorted segment-sum, or a one-hot matmul
for few levels) without touching the models.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp

# The strategy: "scatter" (XLA's gather and scatter-add, the default) or "onehot" (a one-hot
# matrix product, forward and backward, where rows x levels stays under ONEHOT_MAX_CELLS:
# the workaround for jax issue 38806 on a GPU; scripts/bench_device.py compares them).
STRATEGIES = ("scatter", "onehot")
ONEHOT_MAX_CELLS = 1 << 26


def strategy() -> str:
    name = os.environ.get("JAXGLMM_SEGMENT_SUM", "scatter")
    if name not in STRATEGIES:
        raise ValueError(f"JAXGLMM_SEGMENT_SUM must be one of {', '.join(STRATEGIES)}, got "
                         f"{name!r}")
    return name


def _onehot(index: jnp.ndarray, levels: int, dtype):
    """(n, levels) indicator of each row's level, or None where the strategy is not one-hot
    or the matrix would be too big (an index of -1 gives a zero row)."""
    if strategy() != "onehot" or index.shape[0] * levels > ONEHOT_MAX_CELLS:
        return None
    return (index[:, None] == jnp.arange(levels, dtype=index.dtype)).astype(dtype)


def gather_levels(values: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
    """Rows of ``values`` (levels, ...) for each observation's level ``index`` (n,).

    An index of -1 (a level unseen in training) gives zeros.
    """
    oh = _onehot(index, values.shape[0], values.dtype)
    if oh is not None:
        return jnp.tensordot(oh, values, axes=(1, 0))
    safe = jnp.where(index < 0, 0, index)
    out = jnp.take(values, safe, axis=0)
    mask = (index >= 0).reshape((-1,) + (1,) * (out.ndim - 1))
    return jnp.where(mask, out, 0.0)


def segment_sum(data: jnp.ndarray, index: jnp.ndarray, num_segments: int,
                indices_are_sorted: bool = False) -> jnp.ndarray:
    """Sum rows of ``data`` (n, ...) into ``num_segments`` bins given by ``index`` (n,)."""
    oh = _onehot(index, num_segments, data.dtype)
    if oh is not None:
        return jnp.tensordot(oh, data, axes=(0, 0))
    return jax.ops.segment_sum(data, index, num_segments=num_segments,
                               indices_are_sorted=indices_are_sorted)


def take_levels(values: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
    """:func:`gather_levels` for an index known to hold no -1 (the training rows): the plain
    gather, without the mask's extra pass (the large-data Laplace path gathers once per
    pass over the rows)."""
    return values.at[index].get(mode="promise_in_bounds")
