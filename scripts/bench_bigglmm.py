"""Benchmark: the many-rows Laplace path against glmer and glmmTMB, in the same run.

1. A simulated bernoulli GLMM, ``y ~ x + (1 | g)``, 1e6 rows and 1,000 groups (``--n``,
   ``--groups``): jaxglmm in a fresh subprocess (the first fit, compile included, then warm
   refits; peak RSS of that process), and glmer (lme4 defaults) on the same rows.
2. lme4's VerbAgg, ``r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)``, binomial
   (316 subjects x 24 items, 7,584 rows): jaxglmm warm against glmer and glmmTMB warm.
3. A large crossed bernoulli GLMM, ``y ~ x + (1 | a) + (1 | b)``, 60,000 rows, 4,000 x 800
   levels: the Laplace Hessian with L21 sparse (the default from this size) against the
   dense blocks (``core.sparse.SPARSE_MIN_WORK`` raised), first and warm fits in one
   process, and glmer and glmmTMB's first fits on the same rows.

Timings are wall-clock seconds, the fastest of the repeats (the machine may be shared: the
fastest is the least disturbed); CPU seconds of jaxglmm's process are printed beside them.
The R peers run through ``Rscript scripts/bench_bigglmm.R`` and are skipped, saying so, when
R or its packages are absent.

    python scripts/bench_bigglmm.py            # the full run (R's glmer on 1e6 rows: ~2 min)
    python scripts/bench_bigglmm.py --quick    # 1e5 rows
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FORMULA_BIG = "y ~ x + (1 | g)"
FORMULA_VERBAGG = "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)"
FORMULA_CROSSED = "y ~ x + (1 | a) + (1 | b)"


def simulate(n: int, groups: int, seed: int = 1) -> pd.DataFrame:
    """Bernoulli GLMM rows: logit P(y = 1) = -0.3 + 0.7 x + b_g, b_g ~ N(0, 0.8^2)."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    x = rng.standard_normal(n)
    b = 0.8 * rng.standard_normal(groups)
    eta = -0.3 + 0.7 * x + b[g]
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-eta))).astype(float)
    labels = np.array([f"g{i:05d}" for i in range(groups)])
    return pd.DataFrame({"y": y, "x": x, "g": labels[g]})


def refits(model, reps: int):
    """The last of ``reps`` warm Laplace fits, with the fastest wall and CPU seconds."""
    wall, cpu = [], []
    for _ in range(reps):
        a, b = time.perf_counter(), time.process_time()
        fit = model.fit("laplace")
        wall.append(time.perf_counter() - a)
        cpu.append(time.process_time() - b)
    return fit, min(wall), min(cpu)


def child(npz: str, warm_reps: int) -> None:
    """The fresh process: design, first fit (compile included), warm refits, peak RSS."""
    t0 = time.perf_counter()
    import jaxglmm as jg
    t_import = time.perf_counter() - t0
    z = np.load(npz, allow_pickle=False)
    df = pd.DataFrame({"y": z["y"], "x": z["x"], "g": z["g"]})
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t1, c1 = time.perf_counter(), time.process_time()
    model = jg.Model(FORMULA_BIG, df, family="bernoulli")
    t2, c2 = time.perf_counter(), time.process_time()
    fit = model.fit("laplace")
    t3, c3 = time.perf_counter(), time.process_time()
    fit, warm, warm_cpu = refits(model, warm_reps)
    print(json.dumps({
        "import": t_import, "design": t2 - t1, "design_cpu": c2 - c1,
        "first_fit": t3 - t2, "first_fit_cpu": c3 - c2,
        "warm": warm, "warm_cpu": warm_cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_data_mb": rss_data,
        "loglik": fit.loglik, "fixef": fit.fixef.to_dict(), "theta": list(map(float, fit.theta)),
        "n_iter": fit.n_iter, "converged": bool(fit.converged)}))


def r_available() -> str | None:
    """Why R cannot run, or None."""
    if shutil.which("Rscript") is None:
        return "Rscript not found"
    ok = subprocess.run(["Rscript", "-e", "suppressMessages(library(lme4)); library(jsonlite)"],
                        capture_output=True, text=True)
    return None if ok.returncode == 0 else "R package lme4 or jsonlite missing"


def run_r(*args) -> list[dict]:
    out = subprocess.run(["Rscript", str(HERE / "bench_bigglmm.R"), *map(str, args)],
                         capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def verbagg_jaxglmm(reps: int) -> dict:
    import jaxglmm as jg
    df = pd.read_csv(ROOT / "tests" / "data" / "verbagg.csv.gz", dtype={"id": str, "item": str})
    t0 = time.perf_counter()
    model = jg.Model(FORMULA_VERBAGG, df, family="binomial")
    fit = model.fit("laplace")
    cold = time.perf_counter() - t0
    fit, warm, warm_cpu = refits(model, reps)
    return {"cold": cold, "warm": warm, "warm_cpu": warm_cpu, "loglik": fit.loglik,
            "fixef": fit.fixef.to_dict(), "theta": list(map(float, fit.theta)),
            "n_iter": fit.n_iter}


def simulate_crossed(n: int = 60_000, g1: int = 4000, g2: int = 800, seed: int = 0):
    """logit P(y = 1) = -0.3 + 0.5 x + a_i + b_j, a ~ N(0, 0.8^2), b ~ N(0, 0.5^2)."""
    rng = np.random.default_rng(seed)
    a, b, x = rng.integers(0, g1, n), rng.integers(0, g2, n), rng.normal(size=n)
    eta = -0.3 + 0.5 * x + 0.8 * rng.normal(size=g1)[a] + 0.5 * rng.normal(size=g2)[b]
    y = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "x": x, "a": a.astype(str), "b": b.astype(str)})


def crossed_jaxglmm(df: pd.DataFrame) -> dict:
    import jaxglmm as jg
    from jaxglmm.core import sparse as sps
    out = {}
    default = sps.SPARSE_MIN_WORK
    for name, work in (("sparse", default), ("dense", float("inf"))):
        sps.SPARSE_MIN_WORK = work
        t0 = time.perf_counter()
        model = jg.Model(FORMULA_CROSSED, df, family="binomial")
        fit = model.fit("laplace")
        first = time.perf_counter() - t0
        fit, warm, _ = refits(model, 2)
        out[name] = {"first": first, "warm": warm, "loglik": fit.loglik,
                     "theta": list(map(float, fit.theta)), "n_iter": fit.n_iter}
    sps.SPARSE_MIN_WORK = default
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--warm-reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1e5 rows")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.warm_reps)
    n = 100_000 if args.quick else args.n
    why_not_r = r_available()
    print(f"R peers: {'skipped (' + why_not_r + ')' if why_not_r else 'lme4 glmer, glmmTMB'}")

    with tempfile.TemporaryDirectory() as tmp:
        df = simulate(n, args.groups)
        np.savez(Path(tmp) / "big.npz", y=df.y.to_numpy(), x=df.x.to_numpy(),
                 g=df.g.to_numpy().astype(str))
        env = dict(os.environ, JAXGLMM_NO_CACHE="1")
        out = subprocess.run([sys.executable, __file__, "--child", str(Path(tmp) / "big.npz"),
                              "--warm-reps", str(args.warm_reps)],
                             capture_output=True, text=True, env=env, check=True)
        ours = json.loads(out.stdout.strip().splitlines()[-1])
        peer = None
        if not why_not_r:
            df.to_csv(Path(tmp) / "big.csv", index=False)
            peer = run_r("big", Path(tmp) / "big.csv")[0]

    print(f"\n1. bernoulli y ~ x + (1 | g): {n:,} rows, {args.groups:,} groups")
    print(f"   jaxglmm fresh process: import {ours['import']:.2f} s, design {ours['design']:.2f} s, "
          f"first fit (compile included) {ours['first_fit']:.2f} s "
          f"(CPU {ours['first_fit_cpu']:.2f} s), warm fit {ours['warm']:.2f} s "
          f"(CPU {ours['warm_cpu']:.2f} s); design + first fit {ours['design'] + ours['first_fit']:.2f} s")
    print(f"   peak RSS {ours['peak_rss_mb']:.0f} MB ({ours['rss_after_data_mb']:.0f} MB after "
          f"loading the data, before the model); outer evaluations {ours['n_iter']}, "
          f"converged {ours['converged']}")
    print(f"   logLik {ours['loglik']:.6f}, fixef {ours['fixef']}, theta {ours['theta']}")
    if peer:
        print(f"   glmer {peer['seconds']:.2f} s, logLik {peer['logLik']:.6f} "
              f"(jaxglmm - glmer = {ours['loglik'] - peer['logLik']:+.2e}), fixef {peer['fixef']}, "
              f"theta {peer['theta']}")
        print(f"   glmer / jaxglmm: {peer['seconds'] / (ours['design'] + ours['first_fit']):.1f} "
              f"(design + first fit), {peer['seconds'] / ours['warm']:.1f} (warm)")

    print("\n2. VerbAgg r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item), binomial")
    va = verbagg_jaxglmm(5)
    print(f"   jaxglmm: first fit {va['cold']:.2f} s (this process), warm {va['warm'] * 1e3:.0f} ms "
          f"(CPU {va['warm_cpu'] * 1e3:.0f} ms), logLik {va['loglik']:.6f}, "
          f"{va['n_iter']} outer evaluations")
    if not why_not_r:
        for p in run_r("verbagg", 3):
            print(f"   {p['peer']}: warm {p['seconds'] * 1e3:.0f} ms (first {p['seconds_first']:.2f} s), "
                  f"logLik {p['logLik']:.6f} (jaxglmm - {p['peer']} = "
                  f"{va['loglik'] - p['logLik']:+.2e}); {p['peer']} / jaxglmm warm: "
                  f"{p['seconds'] / va['warm']:.1f}")

    print("\n3. crossed bernoulli y ~ x + (1 | a) + (1 | b): 60,000 rows, 4,000 x 800 levels")
    cdf = simulate_crossed()
    cr = crossed_jaxglmm(cdf)
    for name, r in cr.items():
        print(f"   jaxglmm, {name} L21: first fit {r['first']:.2f} s (design and compile "
              f"included), warm {r['warm']:.2f} s, logLik {r['loglik']:.6f}, theta "
              f"{[round(t, 5) for t in r['theta']]}, {r['n_iter']} outer evaluations")
    print(f"   dense / sparse: {cr['dense']['first'] / cr['sparse']['first']:.1f} (first), "
          f"{cr['dense']['warm'] / cr['sparse']['warm']:.1f} (warm)")
    if not why_not_r:
        with tempfile.TemporaryDirectory() as tmp:
            cdf.to_csv(Path(tmp) / "crossed.csv", index=False)
            for p in run_r("crossed", Path(tmp) / "crossed.csv"):
                print(f"   {p['peer']}: {p['seconds']:.2f} s, logLik {p['logLik']:.6f} "
                      f"(jaxglmm - {p['peer']} = {cr['sparse']['loglik'] - p['logLik']:+.2e}); "
                      f"{p['peer']} / jaxglmm first fit: "
                      f"{p['seconds'] / cr['sparse']['first']:.1f}")


if __name__ == "__main__":
    main()
