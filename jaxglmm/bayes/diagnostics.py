"""MCMC diagnostics: rank-normalised split R-hat, bulk and tail ESS, MCSE of the mean.

The definitions are Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021), as ArviZ and
the R package posterior compute them (tested against ArviZ).  They are written here in
numpy so that a fit needs neither ArviZ nor scipy.stats at fit time (importing them costs
more than a warm NUTS fit); ``fit.posterior`` still gives ArviZ InferenceData.

Every function takes draws of one quantity, shaped (chain, draw).
"""
from __future__ import annotations

import numpy as np
from .._lazy import scipy_special


def _split_chains(x: np.ndarray) -> np.ndarray:
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half:]], axis=0)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of the flattened values, ties sharing their average rank."""
    flat = x.ravel()
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return ((upper - (counts - 1) / 2.0)[inverse]).reshape(x.shape)


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Normal scores of the pooled ranks (Blom's offset 3/8)."""
    return scipy_special.ndtri((_average_ranks(x) - 0.375) / (x.size + 0.25))


def _autocov(x: np.ndarray) -> np.ndarray:
    n = x.shape[1]
    m = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(x - x.mean(axis=1, keepdims=True), n=m, axis=1)
    return np.fft.irfft(f * np.conjugate(f), n=m, axis=1)[:, :n] / n


def _ess(x: np.ndarray) -> float:
    """ESS of (chain, draw) draws by Geyer's initial monotone sequence estimator."""
    x = np.asarray(x, float)
    if not np.all(np.isfinite(x)):
        return np.nan
    if np.max(x) - np.min(x) < np.finfo(float).resolution:
        return float(x.size)
    n_chain, n_draw = x.shape
    acov = _autocov(x)
    mean_var = np.mean(acov[:, 0]) * n_draw / (n_draw - 1.0)
    var_plus = mean_var * (n_draw - 1.0) / n_draw
    if n_chain > 1:
        var_plus += np.var(x.mean(axis=1), ddof=1)
    rho = np.zeros(n_draw)
    rho_even, rho_odd = 1.0, 1.0 - (mean_var - np.mean(acov[:, 1])) / var_plus
    rho[0], rho[1] = rho_even, rho_odd
    acov_mean = acov.mean(axis=0)
    t = 1
    while t < n_draw - 3 and rho_even + rho_odd > 0.0:
        rho_even = 1.0 - (mean_var - acov_mean[t + 1]) / var_plus
        rho_odd = 1.0 - (mean_var - acov_mean[t + 2]) / var_plus
        if rho_even + rho_odd >= 0:
            rho[t + 1], rho[t + 2] = rho_even, rho_odd
        t += 2
    max_t = t - 2
    if rho_even > 0:
        rho[max_t + 1] = rho_even
    t = 1
    while t <= max_t - 2:          # initial monotone sequence
        if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
            rho[t + 1] = rho[t + 2] = (rho[t - 1] + rho[t]) / 2.0
        t += 2
    tau = -1.0 + 2.0 * np.sum(rho[:max_t + 1]) + np.sum(rho[max_t + 1:max_t + 2])
    tau = max(tau, 1.0 / np.log10(x.size))
    return float(x.size / tau)


def _rhat_basic(x: np.ndarray) -> float:
    n = x.shape[1]
    between = n * np.var(x.mean(axis=1), ddof=1)
    within = np.mean(np.var(x, axis=1, ddof=1))
    return float(np.sqrt((between / within + n - 1) / n))


def rhat(x) -> float:
    """Rank-normalised split R-hat: the larger of the bulk and the folded (tail) value."""
    x = np.asarray(x, float)
    if x.shape[0] < 2 or x.shape[1] < 4 or not np.all(np.isfinite(x)):
        return np.nan
    split = _split_chains(x)
    bulk = _rhat_basic(_z_scale(split))
    tail = _rhat_basic(_z_scale(np.abs(split - np.median(split))))
    return max(bulk, tail)


def ess_bulk(x) -> float:
    x = np.asarray(x, float)
    if x.shape[1] < 4:
        return np.nan
    return _ess(_z_scale(_split_chains(x)))


def ess_tail(x) -> float:
    """The smaller ESS of the indicators of the 5% and 95% quantiles."""
    x = np.asarray(x, float)
    if x.shape[1] < 4:
        return np.nan
    return min(_ess(_split_chains((x <= np.quantile(x, p)).astype(float))) for p in (0.05, 0.95))


def mcse_mean(x) -> float:
    x = np.asarray(x, float)
    if x.shape[1] < 4:
        return np.nan
    return float(np.std(x, ddof=1) / np.sqrt(_ess(_split_chains(x))))


__all__ = ["rhat", "ess_bulk", "ess_tail", "mcse_mean"]
