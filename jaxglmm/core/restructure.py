"""The random-effect structure: terms grouped into factors, and the maps between theta, the
relative covariance factors ``Lambda_f`` and the random effects.

Terms that share a grouping factor are merged into one *factor* with a block-diagonal relative
covariance factor ``Lambda_f`` (so ``(x || g)`` costs one q=2 block per level, not two
factors).  Factors are sorted by decreasing number of levels, as lme4 does: the first factor
is the one the blocked Cholesky (:mod:`.blocked`, :mod:`.sparse`) keeps block-diagonal.

The static structure (:class:`ReStructure`) is hashable so it can be closed over by jitted
functions; :func:`build_structure` runs once per design on its host arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class TermSpec:
    """One random-effect term inside a factor (columns ``col0 : col0 + q`` of the factor)."""

    label: str
    group: str
    names: tuple[str, ...]
    correlated: bool
    col0: int
    theta_start: int
    theta_rows: tuple[int, ...]
    theta_cols: tuple[int, ...]
    param_group: str = ""     # the group in parameter names (sd_<param_group>__<name>)

    @property
    def q(self) -> int:
        return len(self.names)

    @property
    def n_theta(self) -> int:
        return len(self.theta_rows)


@dataclass(frozen=True)
class FactorSpec:
    group: str
    n_levels: int
    q: int
    terms: tuple[TermSpec, ...]
    # linear predictor (channel) each of the q columns feeds; all 0 for one-predictor models
    channels: tuple[int, ...] = ()


@dataclass(frozen=True)
class ReStructure:
    """Static (hashable) description of the random effects."""

    factors: tuple[FactorSpec, ...]
    n_theta: int
    n_channels: int = 1
    # channel of each fixed-effect coefficient (empty: all in channel 0)
    fixef_channels: tuple[int, ...] = ()

    @property
    def dense_factors(self) -> tuple[FactorSpec, ...]:
        return self.factors[1:]

    @property
    def p2(self) -> int:
        """Length of the dense part of u (all factors but the first)."""
        return sum(f.n_levels * f.q for f in self.dense_factors)

    @property
    def n_u(self) -> int:
        f0 = self.factors[0]
        return f0.n_levels * f0.q + self.p2

    @property
    def terms(self) -> tuple[TermSpec, ...]:
        return tuple(t for f in self.factors for t in f.terms)

    def theta_diagonal(self) -> np.ndarray:
        """Boolean mask of theta entries on a diagonal of Lambda (bounded below by 0 in lme4)."""
        mask = np.zeros(self.n_theta, bool)
        for t in self.terms:
            for k, (r, c) in enumerate(zip(t.theta_rows, t.theta_cols)):
                mask[t.theta_start + k] = r == c
        return mask

    def theta_init(self) -> np.ndarray:
        """lme4's start: Lambda = I."""
        return self.theta_diagonal().astype(float)


def build_structure(terms: Sequence, n_channels: int | None = None,
                    fixef_channels: tuple[int, ...] = ()
                    ) -> tuple[ReStructure, tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Group design terms into factors.

    Parameters
    ----------
    terms: sequence of :class:`jaxglmm.design.RandomTerm`.
    n_channels: the model's linear predictors (a design's ``n_channels``); by default one
        more than the highest channel a term enters.
    fixef_channels: the channel of each fixed-effect coefficient (empty: all in channel 0).

    Returns
    -------
    structure, per-factor group index arrays (n,), per-factor Z arrays (n, q_f).
    """
    if not terms:
        raise ValueError("no random-effects terms specified in formula "
                         "(a mixed model needs at least one '(... | group)' term)")
    merged: list[list] = []
    for t in terms:
        for bucket in merged:
            first = bucket[0]
            if first.group == t.group and np.array_equal(first.group_index, t.group_index):
                bucket.append(t)
                break
        else:
            merged.append([t])
    order = sorted(range(len(merged)), key=lambda k: -merged[k][0].n_levels)
    factors, index, Z = [], [], []
    theta_pos = 0
    for k in order:
        bucket = merged[k]
        col0 = 0
        specs, channels = [], []
        for t in bucket:
            ch = getattr(t, "channel", 0)
            channels.extend(list(ch) if isinstance(ch, tuple) else [int(ch)] * t.q)
            rows, cols = [], []
            for c in range(t.q):
                for r in range(t.q):
                    if r == c or (t.correlated and r > c):
                        rows.append(col0 + r)
                        cols.append(col0 + c)
            specs.append(TermSpec(t.label, t.group, tuple(t.names), bool(t.correlated), col0,
                                  theta_pos, tuple(rows), tuple(cols),
                                  getattr(t, "param_group", "") or t.label))
            theta_pos += len(rows)
            col0 += t.q
        factors.append(FactorSpec(bucket[0].group, bucket[0].n_levels, col0, tuple(specs),
                                  tuple(channels)))
        index.append(np.asarray(bucket[0].group_index, np.int32))
        Z.append(np.concatenate([np.asarray(t.Z, float) for t in bucket], axis=1))
    if n_channels is None:
        n_channels = 1 + max(c for f in factors for c in f.channels)
    return (ReStructure(tuple(factors), theta_pos, n_channels, tuple(fixef_channels)),
            tuple(index), tuple(Z))


def lambdas(structure: ReStructure, theta: jnp.ndarray) -> list[jnp.ndarray]:
    """Relative covariance factors ``Lambda_f`` (q_f x q_f, lower triangular) from theta."""
    # built by stacking entries, not by a scatter: elementwise, so it vectorizes under vmap
    out = []
    zero = jnp.zeros((), dtype=theta.dtype)
    for f in structure.factors:
        entry = {}
        for t in f.terms:
            for k, (r, c) in enumerate(zip(t.theta_rows, t.theta_cols)):
                entry[r, c] = theta[t.theta_start + k]
        rows = [jnp.stack([entry.get((r, c), zero) for c in range(f.q)]) for r in range(f.q)]
        out.append(jnp.stack(rows))
    return out


# ----------------------------------------------------------------------------- u <-> blocks
def split_u(structure: ReStructure, u: jnp.ndarray) -> list[jnp.ndarray]:
    """Flat spherical random effects -> per-factor arrays (levels, q)."""
    out, pos = [], 0
    for f in structure.factors:
        size = f.n_levels * f.q
        out.append(u[..., pos:pos + size].reshape(u.shape[:-1] + (f.n_levels, f.q)))
        pos += size
    return out


def random_effects(structure: ReStructure, lams, u: jnp.ndarray) -> list[jnp.ndarray]:
    """b_f = Lambda_f u_f per level: list of (levels, q_f)."""
    return [uf @ lam.T for uf, lam in zip(split_u(structure, u), lams)]


def term_covariances(structure: ReStructure, theta: np.ndarray, scale: float = 1.0) -> dict:
    """Covariance matrix of each term's random effects, keyed by ``(label, names)`` (the
    label alone repeats across the per-category copies of a categorical model's terms).

    ``Lambda`` is relative to the residual SD for gaussian models (``scale = sigma``) and
    absolute (``scale = 1``) otherwise.
    """
    theta = np.asarray(theta, float)
    out = {}
    for t in structure.terms:
        L = np.zeros((t.q, t.q))
        for k, (r, c) in enumerate(zip(t.theta_rows, t.theta_cols)):
            L[r - t.col0, c - t.col0] = theta[t.theta_start + k]
        out[(t.label, tuple(t.names))] = (scale ** 2) * (L @ L.T)
    return out


def canonical_theta(structure: ReStructure, theta: np.ndarray) -> np.ndarray:
    """theta with every Cholesky column's diagonal made non-negative, as lme4 reports it
    (``Lambda`` and ``Lambda D`` with D = diag(+-1) give the same covariance)."""
    theta = np.array(theta, float)
    for t in structure.terms:
        rows, cols = np.array(t.theta_rows), np.array(t.theta_cols)
        vals = theta[t.theta_start:t.theta_start + t.n_theta]
        for c in np.unique(cols):
            diag = vals[(rows == c) & (cols == c)]
            if diag.size and diag[0] < 0:
                vals[cols == c] *= -1
        theta[t.theta_start:t.theta_start + t.n_theta] = vals
    return theta

