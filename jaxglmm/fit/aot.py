"""Ahead-of-time compiled functions, by argument shapes, optionally compiled in the background.

The Bayesian runners trace (Python) on the caller's thread and hand the XLA compile of the
sampler to a worker thread, so that the caller can lower and compile the small functions
around it (or find a starting point) while the big one compiles.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import jax
import numpy as np

from .cache import CPU_OPTIONS

_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxglmm-compile")


def _compile(lowered, options: dict | None = None):
    if jax.default_backend() != "cpu":
        return lowered.compile()
    try:
        return lowered.compile(options or CPU_OPTIONS)
    except Exception as e:        # an XLA without the option: compile as usual
        if "compile option" not in str(e):
            raise
        return lowered.compile()


def _placement(x) -> str:
    """A leaf's sharding where it spans several devices; one device (or a host array, or
    an abstract one placed by default) compiles the same program."""
    sharding = getattr(x, "sharding", None)
    if sharding is None or len(getattr(sharding, "device_set", ())) < 2:
        return ""
    return str(sharding)


def shape_key(args) -> tuple:
    """Shapes, dtypes and shardings of the arguments: an executable is compiled for each."""
    leaves, tree = jax.tree.flatten(args)
    return (tree,) + tuple((np.shape(x), np.dtype(getattr(x, "dtype", None) or np.asarray(x).dtype).str,
                            _placement(x))
                           for x in leaves)


class AheadOfTime:
    """A jitted (or pmapped) function's executables, one per argument shapes and dtypes."""

    def __init__(self, fn, options=None):
        """``options``: a function of the arguments (their shapes) giving the CPU compile
        options (default :data:`~jaxglmm.fit.cache.CPU_OPTIONS`)."""
        self.fn = fn
        self.options = options
        self.compiled: dict[tuple, Future] = {}
        self.lowered: dict[tuple, object] = {}      # lowered, not yet compiled
        self.outputs: dict[tuple, object] = {}      # output shapes, by argument shapes
        self.lock = threading.Lock()

    def out_info(self, *args):
        """The output shapes (ShapeDtypeStructs) for these arguments' shapes: lowered now
        (kept for :meth:`prepare` to compile) the first time, then remembered."""
        key = shape_key(args)
        with self.lock:
            if key not in self.outputs:
                lowered = self.fn.lower(*args)
                self.outputs[key] = lowered.out_info
                if key not in self.compiled:
                    self.lowered[key] = lowered
            return self.outputs[key]

    def prepare(self, *args, background: bool = True) -> Future:
        """Lower for these arguments' shapes (now) and compile (in the background, or now)."""
        key = shape_key(args)
        with self.lock:
            if key not in self.compiled:
                lowered = self.lowered.pop(key, None) or self.fn.lower(*args)
                options = self.options(*args) if self.options is not None else None
                if background:
                    self.compiled[key] = _POOL.submit(_compile, lowered, options)
                else:
                    done = Future()
                    done.set_result(_compile(lowered, options))
                    self.compiled[key] = done
            return self.compiled[key]

    def __call__(self, *args):
        return self.prepare(*args, background=False).result()(*args)


__all__ = ["AheadOfTime", "shape_key"]
