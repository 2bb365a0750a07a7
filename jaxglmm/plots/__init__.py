"""Plots (a later stage, not built yet): matplotlib and ArviZ figures of results, behind the
``[plots]`` extra.  Reads results; nothing below imports it."""
