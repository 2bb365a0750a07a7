"""Test setup: CPU, float64, seeded; one device unless multidevice tests are selected; a
persistent compilation cache for the session; fitted models cached for the session.

The suite is compile-bound: each model shape compiles its programs once per process, and
they stay compiled for the whole session.  Compiled programs are freed only by the tests
about freeing them (test_cache.py and a few others) and by the ``_map_headroom`` fixtures
when the process nears Linux's memory-mapping cap; a freed program then reloads from the
session's disk cache instead of compiling again.
"""
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The default disk cache (~/.cache/jaxglmm) stays off, in this process and in the CLI
# subprocesses some tests start; this process uses the session's own cache (pytest_configure).
os.environ.setdefault("JAXGLMM_NO_CACHE", "1")
# A reused program is not optimized again in a background thread (jaxglmm.fit.stored): a
# test's results never depend on whether that finished.  tests/test_cache.py turns it on.
os.environ.setdefault("JAXGLMM_BACKGROUND_OPTIMIZE", "0")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

MULTIDEVICE = 4          # CPU devices for the tests marked multidevice
# Free the compiled programs before a module when the process holds more than this share of
# vm.max_map_count (jaxglmm's own guard frees them, with a warning, past 60%).
MAP_SHARE = 0.4
MAP_SHARE_TEST = 0.55      # the same before each test
MIN_COMPILE_SECONDS = 0.0   # programs compiled faster than this are not written to disk


def _map_limit() -> int:
    try:
        return int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return 0


def _selects(markexpr: str, marks: set) -> bool:
    """Whether ``-m markexpr`` selects a test carrying exactly ``marks``."""
    if not markexpr.strip():
        return True
    from _pytest.mark.expression import Expression
    return Expression.compile(markexpr).evaluate(lambda name, **kwargs: name in marks)


def pytest_configure(config):
    """One CPU device, or MULTIDEVICE when ``-m`` selects tests marked multidevice (NUTS's
    parallel chains, fit_many's sharding); set before JAX starts its backend."""
    expr = config.option.markexpr or ""
    multi = any(_selects(expr, {"multidevice"} | extra) for extra in (set(), {"slow"}))
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        n = MULTIDEVICE if multi else 1
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    import jax

    import jaxglmm  # (enables float64)
    # The session's persistent compilation cache, in a fresh folder (a fresh clone runs as
    # this one does).  Every program goes in, however quick to compile: a freed one, or the
    # same program built by another jitted function, then loads instead of compiling.
    folder = tempfile.mkdtemp(prefix="jaxglmm-test-xla-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    jaxglmm.enable_compilation_cache(folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    if multi and jax.device_count() < MULTIDEVICE:
        raise pytest.UsageError(f"tests marked multidevice need {MULTIDEVICE} CPU devices, JAX "
                                f"sees {jax.device_count()} (XLA_FLAGS={flags!r})")


def pytest_collection_modifyitems(session, config, items):
    """The slowest modules first (their wall seconds measured by scripts/profile_suite.py,
    in tests/data/module_seconds.json; a module not listed counts as quick), each module's
    tests in their own order: pytest-xdist hands modules out in this order (--dist loadfile),
    so the last ones to start are short and the two workers end together.  The order is
    the same in every process, as xdist requires."""
    path = Path(__file__).parent / "data" / "module_seconds.json"
    if not path.exists():
        return
    import json
    seconds = json.loads(path.read_text())
    first = {}
    for k, item in enumerate(items):
        first.setdefault(item.nodeid.split("::")[0], k)
    items.sort(key=lambda item: (-seconds.get(item.nodeid.split("::")[0], 0.0),
                                 first[item.nodeid.split("::")[0]]))


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(20261125)


def _free_programs_past(share: float) -> None:
    from jaxglmm.fit import cache
    limit, count = _map_limit(), cache.memory_map_count()
    if limit and count is not None and count > share * limit:
        cache.clear_caches()


@pytest.fixture(autouse=True, scope="module")
def _map_headroom_per_module():
    """Each compiled CPU program holds hundreds of memory mappings, and XLA crashes a process
    past Linux's cap (vm.max_map_count).  Free the compiled programs before a module that
    starts near it (before its fixtures fit anything), so that jaxglmm's guard (and its
    warning) rarely has to; a freed program reloads from the session's disk cache."""
    _free_programs_past(MAP_SHARE)
    yield


@pytest.fixture(autouse=True)
def _map_headroom():
    """The same before each test, nearer the cap: a module that compiles many shapes."""
    _free_programs_past(MAP_SHARE_TEST)
    yield


_FITS: dict = {}


@pytest.fixture(scope="session")
def shared_fit():
    """A model fitted once per session, as MixedModels.jl's test/modelcache.jl:
    ``shared_fit(formula, dataset, family="gaussian", method=None, **options)`` with
    ``dataset`` a bundled dataset's name.  Every test asking with the same arguments gets the
    same FitResult: read it, never change it (``dataclasses.replace`` makes a changed copy)."""
    import jaxglmm

    def get(formula, dataset, family="gaussian", method=None, **options):
        key = (formula, dataset, family, method, tuple(sorted(options.items())))
        if key not in _FITS:
            model = jaxglmm.Model(formula, jaxglmm.load_dataset(dataset), family)
            _FITS[key] = model.fit(method, **options)
        return _FITS[key]

    return get


@pytest.fixture(scope="session")
def reference_fit(shared_fit):
    """A reference case fitted once per session: ``reference_fit(case) -> (fit, reference)``."""
    from reference_cases import CASES, load_reference

    def get(case):
        dataset, family, method, options, _ = CASES[case]
        ref = load_reference(case)
        return shared_fit(ref["formula"], dataset, family, method, **options), ref

    return get
