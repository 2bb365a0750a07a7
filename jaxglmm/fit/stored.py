"""Compiled fit programs kept on disk as executables, so that a new process runs them without
tracing, lowering or compiling.

JAX's persistent cache (:func:`jaxglmm.fit.cache.enable_compilation_cache`) saves the
compile, but finds its entry by the lowered program, so a new process still traces and lowers
the fit first: for sleepstudy's REML program 0.2 s of tracing and 0.1 s of lowering before
a 0.07-0.1 s load (scripts/bench_peers.py).  Here a program is found by what decides it:
the program's key (:func:`jaxglmm.fit.cache.program`: the random-effect structure, the
family, the flags), the arguments' shapes and dtypes, the jax and jaxlib versions, the
device, and the source of jaxglmm itself.  The entry is the serialized executable
(``jax.experimental.serialize_executable``), loaded without tracing anything.

A key holds only plain values (numbers, strings, tuples, dataclasses of them) and
jaxglmm's own registered families, which are found again by name and link; anything else
(a user's family, a printing program's callbacks) is not stored, and compiles as before.  An
entry that cannot be read is ignored with a warning and written again.
"""
from __future__ import annotations

import atexit
import dataclasses
import hashlib
import os
import pickle
import threading
import warnings
from pathlib import Path

import jax
import jaxlib
import numpy as np

from ..families import Family, get_family
from . import cache

_SOURCE: dict = {}


def _source_hash() -> str:
    """A hash of jaxglmm's source files, by their names, sizes and modification times: a
    changed library never loads an old program.  (Their contents took 23 ms to read and
    hash in a new process, a fifth of sleepstudy's first fit in a second process; a file
    rewritten unchanged only costs a compile.)"""
    if "hash" not in _SOURCE:
        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            stat = path.stat()
            h.update(f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        _SOURCE["hash"] = h.hexdigest()
    return _SOURCE["hash"]


def stable_text(value) -> str | None:
    """``value`` as text that is the same in every process, or None where it has no such
    form (a function, an object of unknown kind, a family that is not jaxglmm's own)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    if isinstance(value, np.ndarray):
        return f"array({value.dtype.str},{value.shape},{value.tobytes().hex()})"
    if isinstance(value, (tuple, list)):
        parts = [stable_text(v) for v in value]
        return None if None in parts else "(" + ",".join(parts) + ")"
    if isinstance(value, Family):
        try:
            same = get_family(value.name, value.link.name) == value
        except (ValueError, TypeError):
            same = False
        factory = getattr(getattr(value, "factory", None), "__module__", "") or ""
        if not same or not factory.startswith("jaxglmm."):
            return None
        return f"Family({value.name!r},{value.link.name!r})"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        parts = [stable_text(getattr(value, f.name)) for f in dataclasses.fields(value)]
        if None in parts:
            return None
        return f"{type(value).__module__}.{type(value).__qualname__}(" + ",".join(parts) + ")"
    return None


def _signature(leaves) -> tuple:
    return tuple((np.shape(x), np.dtype(x.dtype).str, bool(getattr(x, "weak_type", False)))
                 for x in leaves)


# A program compiled with XLA's optimizations off (:data:`jaxglmm.fit.likelihood.
# COMPILER_OPTIONS`: half the compile time of a first fit) runs 2 to 5 times slower: a
# binomial GLMM on 3000 rows 10 ms an evaluation against 3 ms, cbpp's fit 10 ms against
# 2.2 ms, sleepstudy's 1.4 ms against 0.75 ms.  When such a program is called a second time
# (a refit, a loop, a notebook cell run again) it is compiled again with them on, in a
# thread, and replaces the first when ready; the optimized one is also the one kept on disk.
OPTIMIZED = {"xla_backend_optimization_level": 2}
_threads: list[threading.Thread] = []
_local = threading.local()


def background_optimization() -> bool:
    """Whether reused programs are optimized in the background (``JAXGLMM_BACKGROUND_OPTIMIZE``
    = 0 turns it off; the tests do, so that their results never depend on timing)."""
    return os.environ.get("JAXGLMM_BACKGROUND_OPTIMIZE", "1") != "0"


def wait() -> None:
    """Wait for the programs being optimized in the background (at exit, JAX's compiler must
    not be running)."""
    while _threads:
        _threads.pop().join()


atexit.register(wait)


def _on_event(event: str, **kwargs) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _local.hit = True


jax.monitoring.register_event_listener(_on_event)


@dataclasses.dataclass
class _Entry:
    """One argument signature's executable: whether it is the optimized one, whether it came
    from disk (checked on its first run), and how often it was called."""

    exe: object
    optimized: bool
    path: Path | None = None
    loaded: bool = False
    calls: int = 0


class Stored:
    """A jitted program whose executables, one per argument signature, are kept in memory
    and in the disk cache's ``programs`` folder (when the cache is on).  Call it as the
    jitted function."""

    # LAPACK is set up (cache.lapack_ready) before a compile, and before a loaded program
    # that calls it runs: a loaded program that calls none never imports scipy
    sets_up_lapack = True

    def __init__(self, key: tuple, jitted, options: dict | None = None):
        self.jitted, self._entries = jitted, {}
        compiler = dict((options or {}).get("compiler_options") or {})
        self._fast = compiler.get("xla_backend_optimization_level") == 0
        text = stable_text(key)
        self._key = None if text is None else f"{text}|{stable_text(sorted(compiler.items()))}"

    def __call__(self, *args):
        leaves, tree = jax.tree_util.tree_flatten(args)
        signature = (tree, _signature(leaves))
        entry = self._entries.get(signature)
        if entry is None:
            entry = self._entries[signature] = self._load_or_compile(signature, args)
        entry.calls += 1
        if entry.loaded:
            return self._first_run(signature, entry, args)
        if entry.calls == 2 and not entry.optimized and background_optimization():
            self._optimize(signature, entry, args)
        return entry.exe(*args)

    def lower(self, *args):
        """The jitted function's ``lower`` (for reading the compiled program's text)."""
        return self.jitted.lower(*args)

    def _path(self, signature, optimized: bool) -> Path | None:
        folder = cache.program_folder()
        if folder is None or self._key is None:
            return None
        device = jax.devices()[0]
        text = "|".join([self._key, str(signature[0]), repr(signature[1]), jax.__version__,
                         jaxlib.__version__, device.platform, device.device_kind,
                         str(jax.device_count()), str(jax.config.jax_enable_x64),
                         _source_hash()])
        suffix = ".opt.exe" if optimized and self._fast else ".exe"
        return folder / (hashlib.sha256(text.encode()).hexdigest() + suffix)

    def _load_or_compile(self, signature, args) -> _Entry:
        for optimized in ((True, False) if self._fast else (True,)):
            path = self._path(signature, optimized)
            if path is not None and path.exists():
                exe = _load(path)
                if exe is not None:
                    return _Entry(exe, optimized, path, loaded=True)
        path = self._path(signature, not self._fast)
        cache.lapack_ready()
        if path is None:
            return _Entry(self.jitted.lower(*args).compile(), not self._fast)
        # compiled afresh, past JAX's own disk cache: an executable JAX loaded from there
        # serializes without its kernels ("Function ..._kernel not found" when loaded again)
        before = jax.config.jax_enable_compilation_cache
        jax.config.update("jax_enable_compilation_cache", False)
        try:
            compiled = self.jitted.lower(*args).compile()
        finally:
            jax.config.update("jax_enable_compilation_cache", before)
        _write(path, compiled)
        return _Entry(compiled, not self._fast, path)

    def _first_run(self, signature, entry: _Entry, args):
        """A loaded executable's first run, checked: one that fails is not trusted again."""
        entry.loaded = False
        try:
            return jax.block_until_ready(entry.exe(*args))
        except jax.errors.JaxRuntimeError as e:
            warnings.warn(f"jaxglmm ignores a cached program that fails to run "
                          f"({entry.path.name}: {e}); compiling it again", RuntimeWarning,
                          stacklevel=4)
            entry.path.unlink(missing_ok=True)
            del self._entries[signature]
            return self(*args)

    def _optimize(self, signature, entry: _Entry, args) -> None:
        path = self._path(signature, True)

        def work():
            _local.hit = False
            try:
                compiled = self.jitted.lower(*args).compile(OPTIMIZED)
            except Exception:       # the fast program stays; nothing is lost
                return
            entry.exe, entry.optimized = compiled, True
            if path is not None and not _local.hit:
                _write(path, compiled)

        thread = threading.Thread(target=work, name="jaxglmm-optimize", daemon=True)
        _threads.append(thread)
        thread.start()


def _load(path: Path):
    """The executable stored at ``path``, or None (with a warning) where it cannot be read."""
    try:
        payload, in_tree, out_tree, lapack = pickle.loads(path.read_bytes())
        from jax.experimental.serialize_executable import deserialize_and_load
        if lapack:      # set up only for programs that call LAPACK (sleepstudy's: none)
            cache.lapack_ready()
        exe = deserialize_and_load(payload, in_tree, out_tree,
                                   execution_devices=jax.devices()[:1])
    except Exception as e:      # any failure to read: never trusted, compiled again
        warnings.warn(f"jaxglmm ignores an unreadable cached program {path.name} "
                      f"({type(e).__name__}: {e}); compiling it again", RuntimeWarning,
                      stacklevel=5)
        return None
    cache.note_loaded()
    return exe


def _write(path: Path, compiled) -> None:
    from jax.experimental.serialize_executable import serialize
    try:
        lapack = "lapack_" in compiled.as_text()     # a LAPACK kernel's custom call
        data = pickle.dumps(serialize(compiled) + (lapack,))
    except Exception:       # a program JAX cannot serialize (host callbacks) is not stored
        return
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)       # atomic: a reader never sees half a file
    except OSError:
        tmp.unlink(missing_ok=True)


__all__ = ["OPTIMIZED", "Stored", "background_optimization", "stable_text", "wait"]
