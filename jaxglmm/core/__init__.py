"""Core stage: pure, jittable JAX.

The random-effect structure (:mod:`.restructure`), its blocked Cholesky (:mod:`.blocked`;
with L21 sparse for large crossed designs, :mod:`.sparse`, on a pattern that
:mod:`jaxglmm.design.sparse` builds on the host; small blocks in :mod:`.linalg`), the one
gather/segment-sum strategy (:mod:`.ops`), the linear predictor and joint log-density (:mod:`.predictor`), the profiled LMM deviance (:mod:`.lmm`), the
Laplace/AGQ objective (:mod:`.laplace`) and the :class:`~.problem.Problem` fitters take.
"""
from .problem import Problem, ProblemArrays

__all__ = ["Problem", "ProblemArrays"]
