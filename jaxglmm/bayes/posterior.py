"""Draws -> the result record: named posterior draws, diagnostics and the usual accessors."""
from __future__ import annotations

import numpy as np
from .._lazy import pandas as pd

from . import diagnostics as dg


def named_draws(bm, samples, report=None) -> tuple[dict, list]:
    """Scalar draws by name (chain, draw), and per grouping factor the random-effect draws
    (chain, draw, level, q); ``report``: :meth:`BayesModel.transform_draws` of the samples,
    where already known."""
    d = bm.transform_draws(samples) if report is None else report
    design = bm.problem.design
    out = {}
    for j, name in enumerate(design.fixef_names):
        out[f"b_{name}"] = d["beta"][..., j]
    for k, t in enumerate(bm.layout.terms):
        sd = np.asarray(samples[f"sd_{k}"])
        for i, name in enumerate(t.names):
            out[f"sd_{t.param_group}__{name}"] = sd[..., i]
        if f"L_{k}" in samples:
            L = np.asarray(samples[f"L_{k}"])
            R = np.einsum("...ij,...kj->...ik", L, L)
            for i in range(t.q):
                for j2 in range(i + 1, t.q):
                    out[f"cor_{t.param_group}__{t.names[i]}__{t.names[j2]}"] = R[..., j2, i]
    for name, v in d["natural"].items():
        if v.ndim == 2:
            out[name] = v
        else:
            for i in range(v.shape[-1]):
                label = "threshold" if name == "thresholds" else name
                out[f"{label}[{i + 1}]"] = v[..., i]
    return out, [np.asarray(b) for b in d["b"]]


def summarize(draws: dict) -> pd.DataFrame:
    """One row per quantity: mean, sd, 95% interval, R-hat (several chains), bulk and tail
    ESS, MCSE of the mean."""
    rows = {}
    n_chains = next(iter(draws.values())).shape[0]
    for name, v in draws.items():
        v = np.asarray(v, float)
        flat = v.reshape(-1)
        rows[name] = {"mean": flat.mean(), "sd": flat.std(ddof=1),
                      "q2.5": np.quantile(flat, 0.025), "q97.5": np.quantile(flat, 0.975),
                      "rhat": dg.rhat(v) if n_chains > 1 else np.nan,
                      "ess_bulk": dg.ess_bulk(v), "ess_tail": dg.ess_tail(v),
                      "mcse_mean": dg.mcse_mean(v)}
    return pd.DataFrame(rows).T
