"""Core stage: pure, jittable JAX.

The random-effect structure and its blocked Cholesky (:mod:`.resystem`, small blocks in
:mod:`.linalg`), the one gather/segment-sum strategy (:mod:`.ops`), the linear predictor and
joint log-density (:mod:`.predictor`), the profiled LMM deviance (:mod:`.lmm`), the
Laplace/AGQ objective (:mod:`.laplace`) and the :class:`~.problem.Problem` fitters take.
"""
from .problem import Problem, ProblemArrays

__all__ = ["Problem", "ProblemArrays"]
