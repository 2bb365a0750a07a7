"""Test setup: CPU, float64, seeded; fitted reference models cached for the session."""
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jaxglmm  # noqa: E402,F401  (enables float64)


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(20261125)


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
