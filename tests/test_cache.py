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
