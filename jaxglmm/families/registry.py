"""The family registry: every family by name, and :func:`get_family`.

The table is built here from each family module's ``FACTORIES`` (name -> (factory, default
link)); the family modules import only :mod:`~jaxglmm.families.base` and
:mod:`~jaxglmm.families.links`, so loading the registry has no cycles.  A new family goes in
a module of its own (or an existing one) with an entry in its ``FACTORIES``, or is added at
run time with :func:`register_family`.
"""
from __future__ import annotations

from typing import Callable

from . import categorical, continuous, count, glm, ordinal
from .base import Family, build_family
from .links import Link

FAMILIES: dict[str, Callable[[Link], Family]] = {}
DEFAULT_LINKS: dict[str, str] = {}
for _module in (glm, count, continuous, ordinal, categorical):
    for _name, (_factory, _link) in _module.FACTORIES.items():
        FAMILIES[_name] = _factory
        DEFAULT_LINKS[_name] = _link

ALIASES = {"normal": "gaussian", "gamma_poisson": "negbinomial", "nbinom2": "negbinomial",
           "ordinal": "cumulative", "multinomial": "categorical", "gamma": "Gamma"}


def register_family(name: str, factory: Callable[[Link], Family], default_link: str) -> None:
    """Add a family: ``factory(link) -> Family``."""
    FAMILIES[name] = factory
    DEFAULT_LINKS[name] = default_link


def _lookup(name: str) -> str | None:
    """The registered name for ``name``: exact, an alias, or the same letters in another case
    (``"Poisson"``, ``"GAMMA"``), as R users write them."""
    if name in FAMILIES:
        return name
    folded = {k.lower(): k for k in FAMILIES} | {k.lower(): v for k, v in ALIASES.items()}
    return folded.get(name.lower())


def get_family(family: str | Family, link: str | None = None) -> Family:
    """Look up a family by name (``"binomial"``) with an optional link name."""
    if isinstance(family, Family):
        return family.with_link(link)
    if not isinstance(family, str):
        raise TypeError(f"family must be a name or a Family, got {type(family).__name__}")
    name = _lookup(family)
    if name is None:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(FAMILIES)}")
    return _make(name, link)


def _make(name: str, link: str | None) -> Family:
    fam = build_family(FAMILIES[name], DEFAULT_LINKS[name])
    return fam.with_link(link)


__all__ = ["FAMILIES", "DEFAULT_LINKS", "ALIASES", "register_family", "get_family"]
