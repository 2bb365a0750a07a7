"""Bayesian stage: priors (:mod:`.priors`), transforms and the log posterior
(:mod:`.density`), the NUTS/VI/MAP drivers (:mod:`.drivers`), draws and their diagnostics
(:mod:`.posterior`, :mod:`.diagnostics`)."""
