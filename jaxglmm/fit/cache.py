"""Compiled programs: a persistent XLA cache on disk, and freeing the in-memory ones.

Every model shape compiles its own programs, and each compiled CPU program keeps hundreds
of memory mappings (about 400 to 1400 per fit on this project's machines).  Linux caps a
process at ``vm.max_map_count`` mappings (65530 by default), and XLA crashes the process
(a segmentation fault) when a compile runs past the cap.  A process that fits many
*differently shaped* models (a long notebook, a test suite) reaches it after about a
hundred fits; same-shape refits reuse one program and never do.  So jaxglmm watches the
count after every compile and, when it passes 60% of the cap, frees the compiled programs
at the start of the next fit (with a warning), as :func:`clear_caches` does.
"""
from __future__ import annotations

import gc
import math
import os
import re
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

_MAP_FRACTION = 0.6
_state = {"pressure": False, "limit": None, "compiles": 0}
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_count_lock = threading.Lock()
# Every compiled program jaxglmm keeps, by key: the one place they are cached.
_PROGRAMS: dict = {}


# On the CPU, XLA's older (non-MLIR) fusion emitters compile jaxglmm's programs in about
# half the time and CPU of the default ones, and run them as fast: sleepstudy NUTS 2.7 s ->
# 1.8 s compile (scripts/bench_nuts.py); simulate's program 0.96 -> 0.48 s (gaussian) and
# 1.5 -> 1.2 s (poisson), runs 0.39 -> 0.37 ms and 3.9 -> 4.1 ms.  Every program jaxglmm
# compiles on the CPU takes it (:func:`jit`, :mod:`jaxglmm.fit.aot`).
CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


def jit(fn: Callable, nested: bool = False, **options):
    """``jax.jit(fn, **options)``: the library's one call of ``jax.jit``.  Call it inside
    the ``build`` of :func:`program`, so that every compiled program is kept (and freed)
    here and same-shape data reuse it.  On the CPU, a program given no compiler options
    compiles with :data:`CPU_OPTIONS`.  ``nested``: a function users may call inside
    their own ``jit``, ``grad`` or ``vmap`` (``fit_fn``'s), which JAX refuses to give
    compiler options: it takes none."""
    if nested:
        if "compiler_options" in options:
            raise ValueError("a nested jit takes no compiler options (JAX refuses them)")
    elif "compiler_options" not in options and jax.default_backend() == "cpu":
        options["compiler_options"] = CPU_OPTIONS
    return jax.jit(fn, **options)


_LAPACK = {"ready": False}


def lapack_ready() -> None:
    """Set up jaxlib's CPU LAPACK kernels (once per process), before a program that calls
    one is lowered or a loaded one runs (a loaded program that calls one in a process that
    has set up none crashes).

    jaxlib takes the kernels' function pointers from scipy's Cython LAPACK and BLAS
    modules, which it imports through ``scipy.linalg``: 0.11-0.15 s in a new process (the
    package's ``__init__`` imports most of scipy.linalg, and numpy.f2py with it).  The two
    extension modules alone load in 8 ms, so they are loaded here from their files in
    scipy's own folder, and jaxlib then finds them in ``sys.modules`` (a later ``import
    scipy.linalg`` takes them from there too).  Anything unexpected leaves it to jaxlib."""
    if _LAPACK["ready"] or jax.default_backend() != "cpu":
        return
    _LAPACK["ready"] = True
    if "scipy.linalg" not in sys.modules:
        try:
            _load_cython_lapack()
        except Exception:       # noqa: BLE001 - jaxlib imports them itself below
            pass
    from jaxlib import lapack       # jaxlib's own module (not jaxglmm's): loaded here only
    lapack.prepare_lapack_call("potrf_ffi", np.float64)


_CYTHON = ("cython_blas", "cython_lapack")         # LAPACK's module uses BLAS's


def _load_cython_lapack() -> None:
    import importlib.util
    spec = importlib.util.find_spec("scipy")
    folder = Path(spec.origin).parent / "linalg"
    for name in _CYTHON:
        full = f"scipy.linalg.{name}"
        if full in sys.modules:
            continue
        path = next(folder.glob(f"{name}.*.so"), None) or next(folder.glob(f"{name}.*.pyd"))
        module_spec = importlib.util.spec_from_file_location(full, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[full] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[full]
            raise
    sys.meta_path.insert(0, _AttachToScipyLinalg())


class _AttachToScipyLinalg:
    """When ``scipy.linalg`` is imported later, its submodules loaded above become its
    attributes, as an ordinary import of them would have made them (``import
    scipy.linalg.cython_lapack`` then finds them in ``sys.modules`` and sets nothing)."""

    def find_spec(self, name, path=None, target=None):
        if name != "scipy.linalg":
            return None
        sys.meta_path.remove(self)
        import importlib.util
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            for child in _CYTHON:
                if f"{name}.{child}" in sys.modules:
                    setattr(module, child, sys.modules[f"{name}.{child}"])
        spec.loader.exec_module = exec_module
        return spec


def program(key: tuple, build: Callable[[], Any]):
    """The program for ``key``, built by ``build()`` on first use and kept until
    :func:`clear_caches`.

    ``key`` names the program and holds everything static it closes over (a name string
    first, then the random-effect structure, the family, flags); ``build`` returns a jitted
    function, an :class:`~jaxglmm.fit.aot.AheadOfTime` or a tuple holding one.  Same-shape
    data then reuse the compiled program: the data are its arguments, never part of the key.
    """
    try:
        return _PROGRAMS[key]
    except KeyError:
        made = _PROGRAMS[key] = build()
        if not getattr(made, "sets_up_lapack", False):
            lapack_ready()      # before it is lowered: the cheap set-up above
        return made


# a LAPACK kernel's custom call in compiled HLO text, with its result's shape
_LAPACK_CALL = re.compile(r"= \(?[a-z0-9]+\[([0-9,]*)\][^\n]*custom_call_target=\"(lapack_\w+)\"")


def batched_lapack_calls(hlo_text: str) -> list[str]:
    """The LAPACK calls over a batch of matrices in a compiled program's HLO text
    (``compiled.as_text()``), as ``"target[shape]"``.

    jaxlib's batched LAPACK kernels split the batch over XLA's CPU thread pool and wait for
    the pieces while running on that pool; two of them running at once on a small pool wait
    for each other forever (issue 22).  jaxglmm's likelihood programs hold none: per-group
    blocks are factored elementwise (:mod:`jaxglmm.core.linalg`) and the finite-difference
    Hessian maps rather than batches (:func:`jaxglmm.fit.optimize.fd_hessian`).  The tests
    check this with this function."""
    out = []
    for dims, target in _LAPACK_CALL.findall(hlo_text):
        shape = [int(d) for d in dims.split(",") if d]
        if len(shape) > 2 and math.prod(shape[:-2]) > 1:
            out.append(f"{target}[{dims}]")
    return out


def n_compiled() -> int:
    """How many XLA executables this process has made so far (compiled, or loaded from the
    persistent cache), counted by a ``jax.monitoring`` listener on JAX's backend-compile
    event; for tests and diagnostics: fitting a same-shape dataset again adds none."""
    return _state["compiles"]


# Programs that compile faster than this are not written to disk (reading one back costs
# a few milliseconds).  The folder is not size-capped: JAX's cap
# (jax_compilation_cache_max_size) needs the filelock package.
MIN_CACHED_COMPILE_SECONDS = 0.05


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path:
    """Keep compiled programs on disk (``~/.cache/jaxglmm/xla`` or ``JAXGLMM_CACHE_DIR``).

    A fit is compiled once per shape bucket; with the cache a later process loads it
    instead of compiling again.  This sets JAX's process-wide cache directory.  jaxglmm
    turns it on when imported (:func:`default_compilation_cache`).  A stale or corrupt
    entry is not trusted: JAX warns and compiles again.
    """
    folder = Path(path or os.environ.get("JAXGLMM_CACHE_DIR")
                  or Path.home() / ".cache" / "jaxglmm" / "xla")
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    _state["programs"] = folder / "programs"      # :mod:`jaxglmm.fit.stored`'s executables
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_CACHED_COMPILE_SECONDS)
    return folder


def default_compilation_cache() -> Path | None:
    """The disk cache jaxglmm turns on when imported: :func:`enable_compilation_cache`'s
    folder, unless ``JAXGLMM_NO_CACHE`` is set or JAX already has a cache directory (the
    user's own).  An unwritable folder leaves it off, with a warning."""
    if os.environ.get("JAXGLMM_NO_CACHE") or jax.config.jax_compilation_cache_dir:
        return None
    try:
        return enable_compilation_cache()
    except OSError as e:
        warnings.warn(f"jaxglmm runs without its disk cache of compiled programs: {e} "
                      "(set JAXGLMM_CACHE_DIR to a writable folder, or JAXGLMM_NO_CACHE=1)",
                      RuntimeWarning, stacklevel=2)
        return None


def program_folder() -> Path | None:
    """Where :mod:`jaxglmm.fit.stored` keeps whole executables: the ``programs`` folder of
    the disk cache jaxglmm turned on, while JAX still uses that cache; else None."""
    folder = _state.get("programs")
    if folder is None or jax.config.jax_compilation_cache_dir != str(folder.parent):
        return None
    folder.mkdir(exist_ok=True)
    return folder


def note_loaded() -> None:
    """Count an executable loaded from disk by :mod:`jaxglmm.fit.stored` as one made
    (:func:`n_compiled`)."""
    with _count_lock:
        _state["compiles"] += 1


def clear_caches() -> None:
    """Free every compiled program this process holds (JAX's caches and jaxglmm's compiled
    samplers, optimizers and helpers); the next fit of each shape compiles again.  Results
    already returned stay valid."""
    _PROGRAMS.clear()
    jax.clear_caches()
    gc.collect()
    _state["pressure"] = False


def memory_map_count() -> int | None:
    """Memory mappings of this process (Linux), else None."""
    try:
        with open(f"/proc/{os.getpid()}/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def _map_limit() -> int:
    if _state["limit"] is None:
        try:
            _state["limit"] = int(Path("/proc/sys/vm/max_map_count").read_text())
        except (OSError, ValueError):
            _state["limit"] = 0
    return _state["limit"]


def _after_compile(event: str, duration: float, **kwargs) -> None:
    if event != _COMPILE_EVENT:
        return
    with _count_lock:
        _state["compiles"] += 1
    if not _map_limit():
        return
    count = memory_map_count()
    if count is not None and count > _MAP_FRACTION * _map_limit():
        _state["pressure"] = True


def free_programs_near_map_cap() -> None:
    """Called at the start of each fit: frees the compiled programs when the process nears
    its memory-mapping cap (see the module docstring)."""
    if _state["pressure"]:
        warnings.warn(f"this process holds {memory_map_count()} memory mappings, near the "
                      f"system's cap of {_map_limit()} (vm.max_map_count) past which XLA "
                      "crashes: freeing compiled programs (jaxglmm.clear_caches()); models "
                      "fitted before compile again", RuntimeWarning, stacklevel=3)
        clear_caches()


jax.monitoring.register_event_duration_secs_listener(_after_compile)
