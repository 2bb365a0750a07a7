"""Freeing compiled programs: jaxglmm.clear_caches, and the guard that frees them before a
process reaches its memory-mapping cap (where XLA would crash it)."""
import jax
import numpy as np
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
# A new process that fits sleepstudy and counts, with jax.monitoring, what it traced and
# compiled, and the fit programs it loaded whole from the disk cache (jaxglmm.fit.stored).
_SECOND_PROCESS = """
import jax.monitoring
counts = {"traces": 0, "compiles": 0}
def listen(event, duration, **kwargs):
    if event.endswith("jaxpr_trace_duration"):
        counts["traces"] += 1
    elif event.endswith("backend_compile_duration"):
        counts["compiles"] += 1
jax.monitoring.register_event_duration_secs_listener(listen)
import jaxglmm as jg
from jaxglmm.fit import cache
model = jg.Model("Reaction ~ Days + (Days | Subject)", jg.load_dataset("sleepstudy"))
made = cache.n_compiled()
fit = model.fit("reml")
import sys
print(repr(fit.loglik), counts["traces"], counts["compiles"], cache.n_compiled() - made,
      "scipy" in sys.modules)
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
    loglik, traces, compiles, made, scipy = out.stdout.split()
    return float(loglik), int(traces), int(compiles), int(made), out.stderr, scipy == "True"


@pytest.mark.slow
def test_a_second_process_loads_the_fit_whole_and_a_corrupt_entry_is_not_trusted(tmp_path):
    """Importing jaxglmm turns the disk cache on.  A second process loads the fit's program
    as an executable: it traces and compiles nothing for it (jaxglmm.fit.stored).  An entry
    overwritten with garbage is ignored with a warning, compiled again, and gives the same
    fit; so is one of JAX's own cache entries."""
    folder = tmp_path / "xla"
    first, traces0, compiles0, made0 = _process(folder)[:4]
    assert traces0 > 0 and compiles0 > 0 and made0 > 0
    assert list((folder / "programs").glob("*.exe"))
    second, traces1, compiles1, made1, _, scipy = _process(folder)
    assert second == first
    assert traces1 == 0 and compiles1 == 0 and made1 == made0     # loaded, not compiled
    # the program calls no LAPACK kernel: loading it does not set LAPACK up (scipy.linalg)
    assert not scipy
    jax_entries = [e for e in folder.rglob("*") if e.is_file() and e.name.endswith("-cache")]
    for entry in jax_entries + list((folder / "programs").glob("*.exe")):
        entry.write_bytes(b"not a compiled program")
    third, traces3, _, _, err, _ = _process(folder, "-W", "always")
    assert third == first and traces3 > 0
    assert "ignores an unreadable cached program" in err
    if jax_entries:
        assert "Error reading persistent compilation cache entry" in err


def test_a_reused_program_is_optimized_in_the_background(monkeypatch):
    """The second call of a program compiled without XLA's optimizations compiles it again
    with them, in a thread; the optimized executable replaces the first, gives the same fit,
    and is the one kept on disk."""
    from jaxglmm.fit import likelihood, stored
    monkeypatch.setenv("JAXGLMM_BACKGROUND_OPTIMIZE", "1")
    data = jg.load_dataset("cbpp")
    model = jg.Model("incidence ~ period + offset(log(size)) + (1 | herd)", data,
                     family="poisson")     # a model no other test fits: a fresh program
    first = model.fit("laplace")
    program = likelihood._program(likelihood._PADDED[model.problem][0], False, False, 1)
    entry, = program._entries.values()
    assert not entry.optimized and entry.calls == 1
    second = model.fit("laplace")
    stored.wait()
    assert entry.optimized and entry.calls == 2
    third = model.fit("laplace")
    for fit in (second, third):
        assert fit.loglik == pytest.approx(first.loglik, rel=1e-10)
        np.testing.assert_allclose(fit.fixef, first.fixef, rtol=1e-7)
    digest = entry.path.name.split(".")[0]
    assert entry.path.name == digest + ".exe"             # compiled fast, then optimized:
    assert (entry.path.parent / (digest + ".opt.exe")).exists()     # both on disk


def test_a_cache_folder_the_user_set_is_left_alone():
    # this process's JAX already has a cache folder (the test session's): left as it is
    folder = jax.config.jax_compilation_cache_dir
    assert folder and cache.default_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir == folder


def test_lapack_is_set_up_without_importing_scipy_linalg():
    """jaxglmm sets up jaxlib's LAPACK kernels from scipy's two Cython modules alone
    (cache.lapack_ready), not through scipy.linalg (0.11-0.15 s in a new process); a GLMM
    that calls LAPACK fits, and a later import of scipy.linalg still finds its submodules
    as its attributes."""
    import subprocess
    import sys
    code = (
        "import sys, jaxglmm as jg\n"
        "fit = jg.fit('cbind(incidence, size - incidence) ~ period + (1 | herd)',\n"
        "             jg.load_dataset('cbpp'), family='binomial')\n"
        "before = 'scipy.linalg' in sys.modules\n"
        "import scipy.linalg.cython_lapack\n"
        "print(repr(fit.loglik), before, scipy.linalg.cython_lapack.__name__,\n"
        "      scipy.linalg.cython_blas.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "JAXGLMM_NO_CACHE": "1"})
    assert out.returncode == 0, out.stderr
    loglik, before, lapack, blas = out.stdout.split()
    assert abs(float(loglik) - (-92.02628)) < 1e-4         # lme4: -92.02628
    assert before == "False"
    assert (lapack, blas) == ("scipy.linalg.cython_lapack", "scipy.linalg.cython_blas")
