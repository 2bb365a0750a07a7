"""One convergence verdict, from one place.

It combines the optimizer's status, the gradient scaled by the inverse Hessian (lme4's
``checkConv`` criterion: the Newton step that remains), the Hessian's positive definiteness and
the singular-fit check (a variance or a Cholesky diagonal at its boundary).  lme4 issues #783
and #599 show users confused by two sources that disagree; here ``converged`` and ``messages``
are the only verdict.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .optimize import LINESEARCH, MAXITER, NONFINITE

SCALED_GRAD_TOL = 2e-3   # lme4: check.conv.grad tol 0.002
SINGULAR_TOL = 1e-4      # lme4: isSingular tol


@dataclass(frozen=True)
class Verdict:
    converged: bool
    singular: bool
    messages: tuple[str, ...]


def judge(status: int, grad: np.ndarray, hessian: np.ndarray, theta: np.ndarray,
          theta_diagonal: np.ndarray, n_iter: int) -> Verdict:
    """Decide whether a fit converged and say why not in words."""
    msgs = []
    grad = np.asarray(grad, float)
    H = np.asarray(hessian, float)
    singular = bool(np.any(np.abs(np.asarray(theta)[theta_diagonal]) < SINGULAR_TOL))
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
    hess_ok = bool(np.all(np.isfinite(H))) and H.size > 0
    if hess_ok:
        evals = np.linalg.eigvalsh(H)
        pd = evals.min() > 1e-10 * max(1.0, abs(evals.max()))
    else:
        pd = False
    if pd:
        scaled = np.linalg.solve(H, grad)
        gmax = float(np.max(np.abs(scaled))) if scaled.size else 0.0
        if gmax > SCALED_GRAD_TOL:
            msgs.append(f"model failed to converge: max |scaled gradient| = {gmax:.3g} "
                        f"(tolerance {SCALED_GRAD_TOL})")
            ok = False
    else:
        gmax = float(np.max(np.abs(grad))) if grad.size else 0.0
        if gmax > 1e-3:
            msgs.append(f"model failed to converge: max |gradient| = {gmax:.3g}")
            ok = False
        if not singular and H.size:
            msgs.append("Hessian of the objective is not positive definite: the model may be "
                        "unidentifiable or very large eigenvalue ratio; rescale variables?")
            ok = False
    if status == LINESEARCH and ok:
        # a stalled line search at a point that passes the gradient test is a converged fit
        msgs.pop(msgs.index("line search could not decrease the objective further"))
    return Verdict(bool(ok), singular, tuple(msgs))
