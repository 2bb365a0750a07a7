"""The README's Python examples run as written, in order, in one namespace (issue 23: the API
in the README works unchanged).  Only the sizes of the simulation-heavy calls are cut, so the
test runs in about a minute: every call, argument name and method is the README's own."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

# (pattern, replacement): smaller replicate counts and draws, nothing else
SMALLER = [
    (r"\bn=1000\b", "n=20"),
    (r"\bnsim=1000\b", "nsim=20"),
    (r"sizes=\[10, 20, 40\]", "sizes=[10, 20]"),
    (r"\bchains=4, draws=1000\b", "chains=2, draws=100, warmup=100"),
    (r"numpyro\.set_host_device_count\(4\)", "numpyro.set_host_device_count(1)"),
]


def readme_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "the README's Python examples were not found"
    code = "\n".join(blocks)
    for pattern, repl in SMALLER:
        code, n = re.subn(pattern, repl, code)
        assert n, f"the README no longer has {pattern!r}: update this test's size cuts"
    return code


@pytest.mark.slow
def test_readme_python_examples_run():
    namespace: dict = {}
    exec(compile(readme_code(), str(README), "exec"), namespace)
    fit, cbpp = namespace["fit"], namespace["cbpp"]
    assert abs(fit.fixef["Days"] - 10.467) < 1e-3          # the values the README quotes
    assert abs(fit.loglik - (-871.81)) < 1e-2
    assert len(namespace["boot"]) == 20 and cbpp.converged
    assert namespace["post"].posterior_summary.shape[0] > 0
