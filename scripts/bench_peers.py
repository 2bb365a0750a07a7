"""jaxglmm side by side with glmm (PyPI, a Rust core; the optional extra ``bench``): the
first fit in a new process with an empty disk cache, the first fit in a second process
(the cache filled by the first), and the warm fit, each case in fresh processes.

    python scripts/bench_peers.py [--repeat 20]

Times exclude ``import``; a peer that is not installed is skipped, and said so.  Benchmark on
a quiet machine (``uptime``): the ratios are from one run.  (Issue 24's other rows, batches,
InstEval, the 1e6-row GLMM, import and CLI, are not timed here yet.)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

CASES = {
    "sleepstudy REML": dict(data="sleepstudy", formula="Reaction ~ Days + (Days | Subject)",
                            family="gaussian", method="reml"),
    "cbpp Laplace": dict(data="cbpp", formula="cbind(incidence, size - incidence) ~ period + "
                         "(1 | herd)", family="binomial", method="laplace"),
}

# each script defines one() (a whole fit, design included) and ends with this timing
TIMING = textwrap.dedent("""
    t = time.perf_counter(); fit = one(); first = time.perf_counter() - t
    warm = []
    for _ in range(repeat):
        t = time.perf_counter(); one(); warm.append(time.perf_counter() - t)
    print(json.dumps({"first": first, "warm": sorted(warm)[len(warm) // 2],
                      "loglik": float(fit.loglik)}))
""")

JAXGLMM = textwrap.dedent("""
    import json, sys, time
    import jaxglmm as jg
    case, repeat = json.loads(sys.argv[1]), int(sys.argv[2])
    df = jg.load_dataset(case["data"])
    def one():
        return jg.Model(case["formula"], df, family=case["family"]).fit(case["method"])
""") + TIMING

GLMM = textwrap.dedent("""
    import json, sys, time
    import glmm
    import jaxglmm as jg
    case, repeat = json.loads(sys.argv[1]), int(sys.argv[2])
    df = jg.load_dataset(case["data"])
    if case["family"] == "binomial":
        df = df.assign(y=df["incidence"] / df["size"])
        formula, kw = "y ~ period + (1 | herd)", {"weights": df["size"].to_numpy(float)}
    else:
        formula, kw = case["formula"], {"reml": case["method"] == "reml"}
    def one():
        return glmm.fit(df, formula, family=case["family"], **kw)
""") + TIMING


def _run(script: str, case: dict, repeat: int, cache: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAXGLMM_NO_CACHE"}
    env["JAXGLMM_CACHE_DIR"] = cache
    out = subprocess.run([sys.executable, "-c", script, json.dumps(case), str(repeat)],
                         capture_output=True, text=True, env=env, timeout=600)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _have(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"],
                          capture_output=True).returncode == 0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    peer = _have("glmm")
    if not peer:
        print("glmm is not installed (pip install '.[bench]'): jaxglmm alone")
    print(f"{'case':18s} {'':8s} {'first, empty cache':>19s} {'second process':>15s} "
          f"{'warm':>9s} {'logLik':>12s}")
    for name, case in CASES.items():
        with tempfile.TemporaryDirectory() as cache:
            cold = _run(JAXGLMM, case, args.repeat, cache)
            second = _run(JAXGLMM, case, args.repeat, cache)
        rows = [("jaxglmm", cold, second)]
        if peer:
            with tempfile.TemporaryDirectory() as cache:
                g = _run(GLMM, case, args.repeat, cache)
            rows.append(("glmm", g, g))
        for who, c, s in rows:
            print(f"{name:18s} {who:8s} {c['first'] * 1e3:17.1f}ms {s['first'] * 1e3:13.1f}ms "
                  f"{c['warm'] * 1e3:7.2f}ms {c['loglik']:12.4f}")
        if peer:
            g = rows[1][1]
            print(f"{'':18s} {'ratio':8s} {cold['first'] / g['first']:18.1f}x "
                  f"{second['first'] / g['first']:14.1f}x {cold['warm'] / g['warm']:8.1f}x "
                  f"{'(jaxglmm / glmm)':>12s}")


if __name__ == "__main__":
    main()
