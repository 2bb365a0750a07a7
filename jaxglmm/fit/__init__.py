"""Fit stage: the outer optimizer (:mod:`.optimize`), the one convergence verdict
(:mod:`.convergence`), likelihood fits (:mod:`.likelihood`) and the one cache of compiled
programs (:mod:`.cache`, with ahead-of-time compiles in :mod:`.aot`)."""
