"""Where the test suite's time goes, per test module: wall, JAX's trace, lowering and
backend-compile seconds, and the number of compiles.

As a pytest plugin (each pytest process, xdist workers included, writes one JSON file)::

    PYTHONPATH=scripts PROFILE_SUITE_OUT=/tmp/suite python -m pytest -p profile_suite \
        -n 2 --dist loadfile -m "(slow or not slow) and not multidevice"

then the table, slowest modules first (a second folder adds a before/after comparison)::

    python scripts/profile_suite.py /tmp/suite [/tmp/suite-before]

``--weights`` writes each module's wall seconds to tests/data/module_seconds.json, from which
tests/conftest.py starts the slowest modules first (xdist then ends with short modules on
both workers instead of one long module on one)::

    python scripts/profile_suite.py /tmp/suite --weights

The suite is compile-bound (docs/benchmarks.md): this is how its compile work was found and
cut, and how to find the next.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

EVENTS = {"wall": "wall", "trace": "jaxpr_trace_duration",
          "lower": "jaxpr_to_mlir_module_duration", "compile": "backend_compile_duration"}
_ROWS: dict = {}
_CURRENT = {"module": None}


def _record(event, seconds, **kwargs):
    module = _CURRENT["module"]
    if module is not None:
        row = _ROWS.setdefault(module, {})
        name = event.rsplit("/", 1)[-1]
        row[name] = row.get(name, 0.0) + seconds
        row[name + "#n"] = row.get(name + "#n", 0) + 1


try:                                    # as a plugin: pytest is there
    import pytest
except ImportError:                     # pragma: no cover
    pytest = None

if pytest is not None and __name__ != "__main__":
    import jax.monitoring

    jax.monitoring.register_event_duration_secs_listener(_record)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        _CURRENT["module"] = item.nodeid.split("::")[0]
        start = time.perf_counter()
        yield
        row = _ROWS.setdefault(_CURRENT["module"], {})
        row["wall"] = row.get("wall", 0.0) + time.perf_counter() - start

    def pytest_sessionfinish(session):
        folder = Path(os.environ.get("PROFILE_SUITE_OUT", "suite-profile"))
        folder.mkdir(parents=True, exist_ok=True)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        (folder / f"{worker}-{os.getpid()}.json").write_text(json.dumps(_ROWS, indent=1))


def load(folder: str, workers_only: bool = False) -> dict:
    """Each module's row, summed over the processes that ran it (``workers_only``: the
    xdist workers' files alone, where there are any: not a second pytest call's)."""
    paths = sorted(Path(folder).glob("*.json"))
    if workers_only and any(p.name.startswith("gw") for p in paths):
        paths = [p for p in paths if p.name.startswith("gw")]
    rows: dict = {}
    for path in paths:
        for module, row in json.loads(path.read_text()).items():
            if not isinstance(row, dict):       # a process's other notes are not modules
                continue
            into = rows.setdefault(module, {})
            for k, v in row.items():
                into[k] = into.get(k, 0) + v
    return rows


def _cells(row: dict) -> str:
    return (f"{row.get('wall', 0):7.1f} {row.get(EVENTS['trace'], 0):6.1f} "
            f"{row.get(EVENTS['lower'], 0):6.1f} {row.get(EVENTS['compile'], 0):7.1f} "
            f"{row.get(EVENTS['compile'] + '#n', 0):6d}")


WEIGHTS = Path(__file__).resolve().parent.parent / "tests" / "data" / "module_seconds.json"


def main(argv: list[str]) -> None:
    if "--weights" in argv:
        argv = [a for a in argv if a != "--weights"]
        rows = load(argv[0], workers_only=True)
        WEIGHTS.write_text(json.dumps({m: round(r.get("wall", 0.0), 1) for m, r in
                                       sorted(rows.items())}, indent=1) + "\n")
        print(f"wrote {WEIGHTS}")
    after = load(argv[0])
    before = load(argv[1]) if len(argv) > 1 else None
    head = "   wall  trace  lower compile  n_cmp"
    print(f"{'module':40s} {head}" + (f" | before: {head}" if before else ""))
    for module, row in sorted(after.items(), key=lambda kv: -kv[1].get("wall", 0)):
        line = f"{module.removeprefix('tests/'):40s} {_cells(row)}"
        if before is not None:
            line += " | " + _cells(before.get(module, {}))
        print(line)
    totals = {k: sum(r.get(k, 0) for r in after.values())
              for k in ("wall", *list(EVENTS.values())[1:], EVENTS["compile"] + "#n")}
    print(f"{'all modules':40s} {_cells(totals)}")


if __name__ == "__main__":
    if not sys.argv[1:]:
        sys.exit(__doc__)
    main(sys.argv[1:])
