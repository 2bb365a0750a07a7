"""A persistent XLA compilation cache, so a new process reuses compiled fits."""
from __future__ import annotations

import os
from pathlib import Path

import jax


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path:
    """Keep compiled programs on disk (``~/.cache/jaxglmm/xla`` or ``JAXGLMM_CACHE_DIR``).

    A fit is compiled once per model shape; with the cache a later process loads it instead
    of compiling again.  This sets JAX's process-wide cache directory.
    """
    folder = Path(path or os.environ.get("JAXGLMM_CACHE_DIR")
                  or Path.home() / ".cache" / "jaxglmm" / "xla")
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return folder
