"""Test setup: CPU, float64, seeded; fitted reference models cached for the session."""
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile from scratch: no persistent compilation cache (the CLI turns it on).
os.environ.setdefault("JAXGLMM_NO_CACHE", "1")
# Four CPU devices: NUTS chains run in parallel and fit_many shards its batch, as on a
# multi-device machine (this must be set before JAX starts).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=4").strip()
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jaxglmm  # noqa: E402,F401  (enables float64)


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(20261125)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Each test module compiles dozens of model shapes, and every compiled CPU program
    holds hundreds of memory mappings: the whole suite in one process would pass Linux's
    cap (vm.max_map_count), where XLA crashes.  Free them after each module (jaxglmm's own
    guard, tested in test_cache.py, would otherwise do it with a warning)."""
    yield
    jaxglmm.clear_caches()


_FIT_CACHE: dict = {}


@pytest.fixture(scope="session")
def reference_fit():
    """Fit a reference case once per session: ``reference_fit(case) -> (fit, reference)``."""
    from reference_cases import CASES, load_reference

    def get(case):
        if case not in _FIT_CACHE:
            dataset, family, method, options, _ = CASES[case]
            ref = load_reference(case)
            data = jaxglmm.load_dataset(dataset)
            fit = jaxglmm.Model(ref["formula"], data, family).fit(method, **options)
            _FIT_CACHE[case] = (fit, ref)
        return _FIT_CACHE[case]

    return get
