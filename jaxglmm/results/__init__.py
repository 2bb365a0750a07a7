"""Results stage: the :class:`FitResult` record with prediction (:mod:`.result`), simulation
(:mod:`.simulate`), the one builder from a raw fit (:mod:`.build`), variance components
(:mod:`.varcorr`) and lme4-style summaries (:mod:`.summary`).  Inference on a fit is in
:mod:`jaxglmm.inference`, as free functions; FitResult's same-named methods call them."""
from .result import FitResult

__all__ = ["FitResult"]
