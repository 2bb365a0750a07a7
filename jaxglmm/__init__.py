"""jaxglmm: generalized linear mixed models in JAX."""
import jax as _jax

# REML, Laplace and Cholesky work need float64 (see README, "Precision").
_jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"
