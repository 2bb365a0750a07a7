"""Freeing compiled programs: jaxglmm.clear_caches, and the guard that frees them before a
process reaches its memory-mapping cap (where XLA would crash it)."""
import jax
import pytest

import jaxglmm as jg
from jaxglmm.fit import cache


def test_clear_caches_frees_memory_mappings():
    if cache.memory_map_count() is None:
        pytest.skip("no /proc on this system")
    jg.clear_caches()
    before = cache.memory_map_count()
    data = jg.load_dataset("sleepstudy")
    fit = jg.Model("Reaction ~ Days + (Days || Subject)", data).fit("ml")
    jg.Model("Reaction ~ 1 + (1 | Subject)", data).fit("reml")
    grown = cache.memory_map_count()
    assert grown > before + 100, (before, grown)
    jg.clear_caches()
    assert cache.memory_map_count() < grown - 100
    # results stay usable, and a model compiles again when fitted again
    assert fit.predict().shape == (180,)
    again = jg.Model("Reaction ~ Days + (Days || Subject)", data).fit("ml")
    assert again.loglik == pytest.approx(fit.loglik, rel=1e-12)


def test_guard_frees_compiled_programs_near_the_mapping_cap(monkeypatch):
    if cache.memory_map_count() is None:
        pytest.skip("no /proc on this system")
    monkeypatch.setitem(cache._state, "limit", 100)      # any process has more than 60 maps
    monkeypatch.setitem(cache._state, "pressure", False)  # and False again afterwards
    cache.program(("marker",), object)
    jax.jit(lambda x: x * 0.98765 + 0.4321)(1.0)          # a fresh compile: the guard looks
    assert cache._state["pressure"]
    model = jg.Model("Reaction ~ Days + (1 | Subject)", jg.load_dataset("sleepstudy"))
    with pytest.warns(RuntimeWarning, match="vm.max_map_count"):
        fit = model.fit("reml")
    assert fit.converged and ("marker",) not in cache._PROGRAMS


# ----------------------------------------------------------------------------- on disk
# A new process that fits sleepstudy and counts, with jax.monitoring, the programs it
# loaded from the disk cache and those it compiled.
_SECOND_PROCESS = """
import jax.monitoring
counts = {"hits": 0, "misses": 0}
def listen(event, **kwargs):
    if event.endswith("cache_hits"):
        counts["hits"] += 1
    elif event.endswith("cache_misses"):
        counts["misses"] += 1
jax.monitoring.register_event_listener(listen)
import jaxglmm as jg
fit = jg.Model("Reaction ~ Days + (Days | Subject)", jg.load_dataset("sleepstudy")).fit("reml")
print(repr(fit.loglik), counts["hits"], counts["misses"])
"""


def _process(folder, *flags):
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "JAXGLMM_NO_CACHE"}
    env["JAXGLMM_CACHE_DIR"] = str(folder)
    out = subprocess.run([sys.executable, *flags, "-c", _SECOND_PROCESS], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    loglik, hits, misses = out.stdout.split()
    return float(loglik), int(hits), int(misses), out.stderr


@pytest.mark.slow
def test_the_disk_cache_is_on_by_default_and_a_corrupt_entry_is_not_trusted(tmp_path):
    """Importing jaxglmm turns the disk cache on: a second process loads the fit's programs
    instead of compiling them.  An entry overwritten with garbage is ignored with JAX's
    warning, compiled again, and gives the same fit."""
    folder = tmp_path / "xla"
    first, hits0, misses0, _ = _process(folder)
    assert misses0 > 0 and any(folder.iterdir())
    second, hits1, misses1, _ = _process(folder)
    assert second == first
    assert hits1 > 0 and misses1 < misses0
    for entry in folder.rglob("*"):
        if entry.is_file() and entry.name.endswith("-cache"):
            entry.write_bytes(b"not a compiled program")
    third, _, _, err = _process(folder, "-W", "always")
    assert third == first
    assert "Error reading persistent compilation cache entry" in err


def test_a_cache_folder_the_user_set_is_left_alone():
    # this process's JAX already has a cache folder (the test session's): left as it is
    folder = jax.config.jax_compilation_cache_dir
    assert folder and cache.default_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir == folder
