"""Closed-form log-likelihood kernels for canonical links (binomial/bernoulli logit, poisson
log), which those families declare as :attr:`~jaxglmm.families.base.Family.canonical_kernel`.

Each is the same function as the family's own kernel (``y eta - trials log(1 + e^eta)``,
``y eta - e^eta``), written so that its derivatives are a few operations per row: the
families' kernels are guarded for every link (``where`` over both branches, logaddexp's
rule), and the third derivative that the many-rows Laplace gradient
(:mod:`jaxglmm.core.glmm_sparse`) takes through them makes XLA recompute the shared
subexpressions in each fused consumer.  For these links the expected and observed
information agree, so the PIRLS weights are the observed ones.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_jvp
def sigmoid(e):
    z = jnp.exp(-jnp.abs(e))
    r = 1.0 / (1.0 + z)
    return jnp.where(e >= 0, r, z * r)


@sigmoid.defjvp
def _sigmoid_jvp(primals, tangents):
    s = sigmoid(primals[0])
    return s, s * (1.0 - s) * tangents[0]


def log1p_unit(z):
    """log(1 + z) for z in [0, 1], to 5e-16 relative: 2 atanh(t), t = z / (2 + z) <= 1/3, by
    its series (18 terms).  Arithmetic only, so XLA vectorizes it, where its float64
    ``log1p`` on the CPU is a scalar call."""
    t = z / (2.0 + z)
    t2 = t * t
    acc = jnp.full_like(t, 1.0 / 37.0)
    for k in range(17, -1, -1):
        acc = 1.0 / (2 * k + 1) + t2 * acc
    return 2.0 * t * acc


@jax.custom_jvp
def softplus(e):
    return jnp.maximum(e, 0.0) + log1p_unit(jnp.exp(-jnp.abs(e)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    return softplus(primals[0]), sigmoid(primals[0]) * tangents[0]


def logit_kernel(y, eta, trials, fp):
    """Binomial (and bernoulli, trials 1) logit kernel: ``y eta - trials log(1 + e^eta)``."""
    return y * eta - trials * softplus(eta)


def log_kernel(y, eta, trials, fp):
    """Poisson log-link kernel: ``y eta - e^eta``."""
    return y * eta - jnp.exp(eta)
