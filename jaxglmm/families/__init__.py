"""Families stage: response distributions as values (see :mod:`.base`), their links and
the registry.  Imports nothing else of jaxglmm."""
from .base import Family
from .links import LINKS, Link, get_link
from .registry import ALIASES, DEFAULT_LINKS, FAMILIES, get_family, register_family

__all__ = ["Family", "Link", "LINKS", "get_link", "FAMILIES", "DEFAULT_LINKS", "ALIASES",
           "get_family", "register_family"]
