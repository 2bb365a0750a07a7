"""Variance components in lme4's ``as.data.frame(VarCorr(fit))`` layout."""
from __future__ import annotations

import numpy as np
from .._lazy import pandas as pd

from ..core.restructure import ReStructure, term_covariances


def varcorr_frame(structure: ReStructure, theta, sigma: float | None) -> pd.DataFrame:
    """Rows: per term, each SD then each correlation; then ``Residual`` for gaussian."""
    rows = []
    covs = term_covariances(structure, theta, 1.0 if sigma is None else sigma)
    # structure.terms is already in lme4's order: decreasing levels, formula order in ties.
    for t in structure.terms:
        C = covs[(t.label, tuple(t.names))]
        sd = np.sqrt(np.clip(np.diag(C), 0, None))
        for i, name in enumerate(t.names):
            rows.append((t.label, name, None, C[i, i], sd[i]))
        for i in range(t.q):
            for j in range(i + 1, t.q):
                denom = sd[i] * sd[j]
                cor = C[i, j] / denom if denom > 0 else np.nan
                rows.append((t.label, t.names[i], t.names[j], C[i, j], cor))
    if sigma is not None:
        rows.append(("Residual", None, None, sigma ** 2, sigma))
    frame = pd.DataFrame(rows, columns=["group", "var1", "var2", "vcov", "sd_or_cor"])
    # keep None (not NaN) for absent names, as lme4's NA
    for col in ("var1", "var2"):
        frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
    return frame

