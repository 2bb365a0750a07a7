"""Inference after the fit (a later stage, not built yet): bootstrap, confidence intervals,
likelihood-ratio tests, denominator degrees of freedom and power, each run as a batch of fits
on :mod:`jaxglmm.many`.  It may import every stage up to :mod:`jaxglmm.many`."""
