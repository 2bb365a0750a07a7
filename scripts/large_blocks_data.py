"""Simulated data for the large correlated random-effect blocks (issue 22) and their
lme4 reference fits (scripts/large_blocks_reference.R).

Writes two tables, values rounded to 3 decimals so that R and Python read the same numbers:

- ``tests/data/large_blocks_small.csv.gz``: 60 groups ``g`` x 12 rows, crossed with 12
  levels ``h``; covariates x1..x9; gaussian responses ``y5``, ``y6``, ``y8`` (one block of
  q = 5, 6, 8 terms on g), ``ycross`` (a q = 5 block on g and a q = 2 block on h) and a
  poisson response ``ypois5`` (a q = 5 block on g).
- ``large_blocks_big_q{5,6,8,10}.csv.gz`` (not stored: :func:`big_table` makes them again,
  and the reference JSON holds their checksums): 3,000 groups x (q + 3) rows, one response
  ``y{q}``, written to the folder given as the first argument (default: the temp folder).

Truth: intercept SD 1 falling linearly to 0.4 for the last slope, all correlations 0.3,
fixed effects linear from 1 to -0.5, residual SD 0.8.

    python scripts/large_blocks_data.py /tmp && Rscript scripts/large_blocks_reference.R all /tmp
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parents[1] / "tests" / "data"


def truth(q: int, sd_top: float = 1.0, sd_last: float = 0.4, rho: float = 0.3):
    sd = np.linspace(sd_top, sd_last, q)
    cov = np.outer(sd, sd) * (rho + (1 - rho) * np.eye(q))
    return np.linspace(1.0, -0.5, q), cov


def linear_part(rng, X, g, q, levels, scale=1.0):
    beta, cov = truth(q)
    b = rng.multivariate_normal(np.zeros(q), cov * scale ** 2, size=levels)
    Z = np.column_stack([np.ones(len(g)), X[:, :q - 1]])
    return Z @ (beta * scale) + np.sum(Z * b[g], axis=1)


def table(groups: int, per: int, qs, seed: int, crossed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = groups * per
    g = np.repeat(np.arange(groups), per)
    X = np.round(rng.normal(size=(n, 9)), 3)
    df = pd.DataFrame({"g": [f"g{i:04d}" for i in g]})
    for j in range(9):
        df[f"x{j + 1}"] = X[:, j]
    for q in qs:
        df[f"y{q}"] = np.round(linear_part(rng, X, g, q, groups) + 0.8 * rng.normal(size=n), 3)
    if crossed:
        h = rng.integers(0, crossed, size=n)
        df["h"] = [f"h{i:02d}" for i in h]
        _, cov_h = truth(2, 0.7, 0.5)
        bh = rng.multivariate_normal(np.zeros(2), cov_h, size=crossed)
        eta = linear_part(rng, X, g, 5, groups) + bh[h, 0] + bh[h, 1] * X[:, 0]
        df["ycross"] = np.round(eta + 0.8 * rng.normal(size=n), 3)
        eta = linear_part(rng, X, g, 5, groups, scale=0.35)
        df["ypois5"] = rng.poisson(np.exp(0.5 + eta))
    return df


BIG_QS = (5, 6, 8, 10)


def big_table(q: int) -> pd.DataFrame:
    """3,000 groups of q + 3 rows (lme4 needs more rows than random effects)."""
    return table(3000, q + 3, (q,), seed=2200 + q)


def main(folder: str) -> None:
    table(60, 12, (5, 6, 8), seed=22, crossed=12).to_csv(
        OUT / "large_blocks_small.csv.gz", index=False)
    for q in BIG_QS:
        big_table(q).to_csv(Path(folder) / f"large_blocks_big_q{q}.csv.gz", index=False)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir())
