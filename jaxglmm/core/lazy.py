"""Fields of a frozen dataclass built on first access.

A problem's device arrays (:class:`~jaxglmm.core.problem.Problem`: a fit runs its padded
host arrays, so the device copy is made only when something reads it) and a result's
pandas objects (its fixed effects, their covariance, the variance components, the
random effects' frames) cost far more to build than the fit that gives them on a warm small
model, and many fits (refits, bootstraps, a batch's datasets) never read them.  The builder
passes such a field a :class:`Deferred` (a function with its arguments); the class's
:class:`LazyField` builds the value when the field is first read and keeps it, so the field
reads as it always did, and ``dataclasses.replace`` and equality see the built value.
"""
from __future__ import annotations

import functools


class Deferred(functools.partial):
    """A field's value to build when first read: ``Deferred(fn, *args, **kwargs)``."""


class LazyField:
    """A data descriptor for a dataclass field that may be given a :class:`Deferred`.

    The value lives in the instance's ``__dict__`` under the field's name; a
    :class:`Deferred` there is called on the first read and replaced by what it returns.
    Read on the class it raises AttributeError, so ``dataclasses`` gives the field no
    default (as a plain annotated field)."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            raise AttributeError(self.name)
        try:
            value = obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None
        if type(value) is Deferred:
            value = obj.__dict__[self.name] = value()
        return value

    def __set__(self, obj, value) -> None:
        obj.__dict__[self.name] = value


def resolved_state(obj, names) -> dict:
    """``obj.__dict__`` with every lazy field among ``names`` built (what pickling and
    copying a record keep)."""
    for name in names:
        getattr(obj, name)
    return obj.__dict__
