"""One convergence verdict, from one place, for every method.

For likelihood fits (:func:`judge`) it combines the optimizer's status, the gradient scaled
by the inverse Hessian (lme4's ``checkConv`` criterion: the Newton step that remains), the
Hessian's positive definiteness and the singular-fit check (a variance or a Cholesky diagonal
at its boundary).  lme4 issues #783 and #599 show users confused by two sources that
disagree; here ``converged`` and ``messages`` are the only verdict.  Bayesian fits are
judged here too, each method by its record's ``judge`` (:mod:`jaxglmm.methods`): R-hat,
divergences and tree depth for NUTS (:func:`judge_nuts`), the ELBO's last change for VI
(:func:`judge_vi`), and the gradient and Hessian at the posterior mode for MAP
(:func:`judge_map`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .optimize import LINESEARCH, MAXITER, NONFINITE

SCALED_GRAD_TOL = 2e-3   # lme4: check.conv.grad tol 0.002
SINGULAR_TOL = 1e-4      # lme4: isSingular tol
# a variance at zero is a minimum there only if the deviance does not decrease into the
# interior: its second derivative in the theta entry (twice the derivative in the variance;
# the deviance is even in the entry) may not be below -NEG_CURVATURE_TOL * max(1, max|H_ii|)
NEG_CURVATURE_TOL = 1e-4
RHAT_MAX = 1.01          # Vehtari et al. (2021); brms/Stan warn above it
ELBO_RTOL = 1e-3         # relative ELBO change over the last tenth of the VI steps
MAP_GRAD_TOL = 1e-3


class ConvergenceWarning(UserWarning):
    """A fit that did not converge, a singular (boundary) fit, or a confounded design (a
    rank-deficient fixed-effect matrix whose columns were dropped).  lme4 warns of the same
    on the console; filter it as any warning class:
    ``warnings.simplefilter("ignore", jg.ConvergenceWarning)``."""


@dataclass(frozen=True)
class Verdict:
    converged: bool
    singular: bool
    messages: tuple[str, ...]


def judge(status: int, grad: np.ndarray, hessian: np.ndarray, theta: np.ndarray,
          theta_diagonal: np.ndarray, n_iter: int) -> Verdict:
    """Decide whether a fit converged and say why not in words.  (Run on every fit: the
    arrays are small, so ndarray methods, not numpy's slower function wrappers.)"""
    msgs = []
    grad = np.asarray(grad, float)
    H = np.asarray(hessian, float)
    singular = bool((np.abs(np.asarray(theta)[theta_diagonal]) < SINGULAR_TOL).any())
    if singular:
        msgs.append("boundary (singular) fit: a random-effect variance is estimated at zero "
                    "or correlations at +/-1; see the varcorr table")
    if status == NONFINITE:
        msgs.append("optimizer reached a non-finite objective")
    elif status == MAXITER:
        msgs.append(f"optimizer stopped at its iteration limit ({n_iter} iterations)")
    elif status == LINESEARCH:
        msgs.append("line search could not decrease the objective further")
    ok = status not in (NONFINITE, MAXITER)
    hess_ok = bool(np.isfinite(H).all()) and H.size > 0
    if hess_ok:
        evals = np.linalg.eigvalsh(H)       # ascending
        pd = float(evals[0]) > 1e-10 * max(1.0, abs(float(evals[-1])))
    else:
        pd = False
    if pd:
        scaled = np.linalg.solve(H, grad)
        gmax = float(np.abs(scaled).max()) if scaled.size else 0.0
        if gmax > SCALED_GRAD_TOL:
            msgs.append(f"model failed to converge: max |scaled gradient| = {gmax:.3g} "
                        f"(tolerance {SCALED_GRAD_TOL})")
            ok = False
    else:
        gmax = float(np.abs(grad).max()) if grad.size else 0.0
        if gmax > 1e-3:
            msgs.append(f"model failed to converge: max |gradient| = {gmax:.3g}")
            ok = False
        if not singular and H.size:
            msgs.append("Hessian of the objective is not positive definite: the model may be "
                        "unidentifiable or very large eigenvalue ratio; rescale variables?")
            ok = False
    if singular and hess_ok and ok:
        d = np.diagonal(H)
        zero = np.zeros(H.shape[0], bool)
        zero[:np.size(theta)] = np.asarray(theta_diagonal, bool) & \
            (np.abs(np.asarray(theta)) < SINGULAR_TOL)
        if np.any(d[zero] < -NEG_CURVATURE_TOL * max(1.0, float(np.max(np.abs(d))))):
            msgs.append("model failed to converge: the deviance decreases away from a "
                        "variance at zero (a stationary point, not a minimum); refit from "
                        "a start away from zero")
            ok = False
    if status == LINESEARCH and ok:
        # a stalled line search at a point that passes the gradient test is a converged fit
        msgs.pop(msgs.index("line search could not decrease the objective further"))
    return Verdict(bool(ok), singular, tuple(msgs))


def judge_nuts(rhat_max: float, diag: dict) -> Verdict:
    """A NUTS fit's verdict from the largest R-hat over the reported quantities (NaN with
    one chain) and the sampler's record ``diag`` (divergences, tree-depth hits)."""
    msgs = []
    ok = not (rhat_max > RHAT_MAX) and diag["divergences"] == 0
    if rhat_max > RHAT_MAX:
        msgs.append(f"R-hat up to {rhat_max:.3f} (> {RHAT_MAX}): the chains have not mixed; "
                    "run longer warmup/draws")
    if diag["divergences"]:
        msgs.append(f"{diag['divergences']} divergent transitions after warmup: raise "
                    "target_accept (e.g. 0.95) or reparameterize")
    if diag["max_tree_depth_hits"]:
        msgs.append(f"{diag['max_tree_depth_hits']} transitions hit the maximum tree depth")
    return Verdict(bool(ok), False, tuple(msgs))


def judge_vi(rhat_max: float, diag: dict) -> Verdict:
    """A VI fit's verdict: the ELBO's relative change over the last tenth of the steps."""
    ok = diag["elbo_relative_change"] < ELBO_RTOL
    msgs = () if ok else (f"ELBO still changing (relative change "
                          f"{diag['elbo_relative_change']:.2e} over the last tenth of the "
                          "steps): run more steps",)
    return Verdict(bool(ok), False, msgs)


def judge_map(rhat_max: float, diag: dict) -> Verdict:
    """A MAP fit's verdict: the gradient and the Hessian at the posterior mode."""
    ok = diag["grad_max"] < MAP_GRAD_TOL and diag["hessian_pd"]
    msgs = () if ok else ("posterior mode not reached or Hessian not positive definite "
                          f"(max |grad| {diag['grad_max']:.2e})",)
    return Verdict(bool(ok), False, msgs)


def judge_many(status, grad, hessian, theta, theta_diagonal, n_iter) -> list[Verdict]:
    """:func:`judge` for a stack of fits (a leading dataset axis), vectorized for the
    clean ones (the common case: 10,000 verdicts in milliseconds, not half a second);
    any fit that is not clean gets :func:`judge`'s own verdict and messages."""
    status = np.asarray(status)
    grad, H = np.asarray(grad, float), np.asarray(hessian, float)
    theta = np.asarray(theta, float)
    n = status.shape[0]
    singular = np.any(np.abs(theta[:, theta_diagonal]) < SINGULAR_TOL, axis=1) \
        if theta.shape[1] else np.zeros(n, bool)
    finite = np.all(np.isfinite(H), axis=(1, 2)) & np.all(np.isfinite(grad), axis=1)
    k = H.shape[-1]
    safe = np.where(finite[:, None, None], H, np.eye(k))
    evals = np.linalg.eigvalsh(safe)
    pd = finite & (evals[:, 0] > 1e-10 * np.maximum(1.0, np.abs(evals[:, -1])))
    scaled = np.linalg.solve(np.where(pd[:, None, None], safe, np.eye(k)), grad[..., None])
    gmax = np.max(np.abs(scaled[..., 0]), axis=1) if k else np.zeros(n)
    clean = np.isin(status, (0, LINESEARCH)) & ~singular & pd & (gmax <= SCALED_GRAD_TOL)
    out = []
    for i in range(n):
        if clean[i]:
            out.append(_CLEAN)
        else:
            out.append(judge(int(status[i]), grad[i], H[i], theta[i], theta_diagonal,
                             int(np.asarray(n_iter)[i])))
    return out


_CLEAN = Verdict(True, False, ())
