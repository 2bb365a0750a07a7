"""Large correlated random-effect blocks (issue 22): jaxglmm against lme4, case by case.

For each case: jaxglmm's cold fit (trace, lower, XLA compile and run, from
``jax.monitoring``'s compile events), a warm refit of the same shape, the program size (the
lowered StableHLO's characters), and lme4's default ``lmer``/``glmer`` seconds, timed now by
Rscript when it is installed (else the seconds stored by scripts/large_blocks_reference.R
on its machine, marked ``stored``; without either, ``-``).

    python scripts/large_blocks_data.py /tmp        # the 3,000-group tables
    python scripts/bench_large_blocks.py [--small] [--no-r] [--cases big_q5_reml,...]
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import pandas as pd

import jaxglmm as jg
from jaxglmm.fit import likelihood
from jaxglmm.methods import get_method

ROOT = Path(__file__).resolve().parents[1]
REF = json.loads((ROOT / "tests" / "data" / "large_blocks_reference.json").read_text())
_events: dict = collections.defaultdict(float)
jax.monitoring.register_event_duration_secs_listener(
    lambda e, d, **k: _events.__setitem__(e, _events[e] + d))


def _data(case: str) -> pd.DataFrame:
    ref = REF[case]
    if case.startswith("small"):
        return pd.read_csv(ROOT / "tests" / "data" / ref["data"])
    spec = importlib.util.spec_from_file_location("lbd", ROOT / "scripts" / "large_blocks_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.big_table(int(ref["data"].split("_q")[1].split(".")[0]))


def _lme4_seconds(case: str, data: pd.DataFrame, use_r: bool) -> str:
    ref = REF[case]
    if not use_r or shutil.which("Rscript") is None:
        return f"{ref['lme4_seconds']:.2f} stored" if "lme4_seconds" in ref else "-"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.csv"
        data.to_csv(path, index=False)
        call = (f"glmer({ref['formula']}, d, family = poisson)" if ref["method"] == "laplace"
                else f"lmer({ref['formula']}, d, REML = {str(ref['method'] == 'reml').upper()})")
        code = (f"suppressMessages(library(lme4)); d <- read.csv('{path}'); "
                f"cat(system.time(suppressWarnings({call}))[['elapsed']])")
        out = subprocess.run(["Rscript", "-e", code], capture_output=True, text=True)
        return out.stdout.strip().split()[-1] if out.returncode == 0 else "R failed"


def bench(case: str, use_r: bool) -> dict:
    ref = REF[case]
    data = _data(case)
    family = "poisson" if ref["method"] == "laplace" else "gaussian"
    jg.clear_caches()
    _events.clear()
    model = jg.Model(ref["formula"], data, family=family)
    start = time.perf_counter()
    fit = model.fit(ref["method"])
    cold = time.perf_counter() - start
    ev = {k.rsplit("/", 1)[-1]: v for k, v in _events.items()}
    start = time.perf_counter()
    model.fit(ref["method"])
    warm = time.perf_counter() - start
    problem = model.problem
    theta0, phi0 = problem.starts
    spec = get_method(ref["method"])
    lmm = likelihood.uses_lmm(problem, spec)
    start_arg = theta0 if lmm else phi0
    size = len(likelihood._program(problem, lmm, spec.reml, 1).lower(problem.arrays,
                                                                     start_arg).as_text())
    return {"case": case, "q": max(f.q for f in problem.structure.factors),
            "groups": problem.structure.factors[0].n_levels, "rows": len(data),
            "trace_s": round(ev.get("jaxpr_trace_duration", 0.0), 2),
            "compile_s": round(ev.get("backend_compile_duration", 0.0), 2),
            "cold_s": round(cold, 2), "warm_s": round(warm, 2), "hlo_chars": size,
            "lme4_s": _lme4_seconds(case, data, use_r),
            "dloglik": f"{fit.loglik - ref['loglik']:.1e}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="only the 60-group cases")
    ap.add_argument("--no-r", action="store_true", help="do not run R (stored seconds)")
    ap.add_argument("--cases", help="comma-separated case names of the reference JSON")
    args = ap.parse_args()
    cases = (args.cases.split(",") if args.cases else
             [c for c in REF if not c.startswith("_") and (c.startswith("small") or not args.small)])
    if shutil.which("Rscript") is None and not args.no_r:
        print("Rscript not found: lme4 seconds are the stored ones (reference machine)")
    rows = []
    for case in cases:
        rows.append(bench(case, not args.no_r))
        print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
