"""Interpretation (a later stage, not built yet): the model's multilevel equations and
emmeans-style marginal effects, from a :class:`~jaxglmm.results.FitResult`."""
