"""Large crossed models (issue 12, "Scale"): jaxglmm against lme4 in the same run.

Cases (a list: add more below):

- insteval: ``y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)``, ML, on lme4's InstEval
  (exported by scripts/bench_scale_lme4.R, which also fits it with lme4), or on data
  generated to the same shape and levels when R is absent (then no lme4 numbers).
- movielens: ``y ~ 1 + (1 | user) + (1 | item)``, ML, simulated to MovieLens-1M's shape
  (1,000,209 ratings, 6,040 users x 3,706 items).

Each case runs in its own process (its peak RSS is the case's own): a first fit (compile
included), then warm refits of the same model; the minimum of the warm repeats is
reported (the machine may be shared: timings are noisy).  Per-evaluation milliseconds (the
deviance, and the deviance with its closed-form gradient where the optimizer uses it) and
evaluation counts come from the sparse path's compiled deviance.

    python scripts/bench_scale.py [--cases insteval,movielens] [--repeats 3]
                                  [--single-thread] [--derivative-free]

``--derivative-free`` fits the all-scalar designs by COBYQA on the deviance, as the others,
instead of L-BFGS-B with the closed-form gradient (the comparison of the two optimizers).
``--single-thread`` runs the cases with XLA's and OpenBLAS's thread pools at one thread
(on a machine shared with other jobs the pools' spinning threads can cost 3-10x).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSTEVAL = "y ~ 1 + service + (1 | s) + (1 | d) + (1 | dept)"
MOVIELENS = "y ~ 1 + (1 | user) + (1 | item)"


# ----------------------------------------------------------------------------- data
def insteval_data(csv: str | None):
    import numpy as np
    import pandas as pd
    if csv:
        return pd.read_csv(csv, dtype={"service": str, "s": str, "d": str, "dept": str})
    # generated to InstEval's shape: s 2972 levels, d 1128, dept 14 (d nested in dept),
    # service 2 levels, 73421 rows
    rng = np.random.default_rng(12)
    n = 73421
    s = np.concatenate([np.arange(2972), rng.integers(0, 2972, n - 2972)])
    d = np.concatenate([np.arange(1128), rng.integers(0, 1128, n - 1128)])
    rng.shuffle(d)
    dept = d % 14
    service = rng.integers(0, 2, n)
    eta = (3.2 + 0.33 * rng.normal(size=2972)[s] + 0.5 * rng.normal(size=1128)[d]
           + 0.08 * rng.normal(size=14)[dept] - 0.09 * service)
    y = np.clip(np.round(eta + 1.18 * rng.normal(size=n)), 1, 5)
    return pd.DataFrame({"y": y, "service": service.astype(str), "s": s.astype(str),
                         "d": d.astype(str), "dept": dept.astype(str)})


def movielens_data():
    import numpy as np
    import pandas as pd
    rng = np.random.default_rng(1)
    users, items, n = 6040, 3706, 1_000_209
    flat = rng.choice(users * items, n, replace=False)
    u, i = flat // items, flat % items
    y = (3.58 + 0.4 * rng.normal(size=users)[u] + 0.5 * rng.normal(size=items)[i]
         + 0.9 * rng.normal(size=n))
    return pd.DataFrame({"y": y, "user": u.astype(str), "item": i.astype(str)})


CASES = [
    # name, formula, method, data builder (takes the lme4 CSV or None), warm repeats cap
    ("insteval", INSTEVAL, "ml", insteval_data, None),
    ("movielens", MOVIELENS, "ml", lambda csv: movielens_data(), 1),
]


# ----------------------------------------------------------------------------- one case
def run_case(name: str, csv: str | None, repeats: int, derivative_free: bool = False) -> dict:
    import resource

    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxglmm as jg
    from jaxglmm.core import sparse as sps
    from jaxglmm.design.sparse import sparse_lmm_data
    from jaxglmm.fit import likelihood
    from jaxglmm.methods import get_method

    _, formula, method, build, cap = next(c for c in CASES if c[0] == name)
    df = build(csv)
    t0 = time.perf_counter()
    model = jg.Model(formula, df)
    design_s = time.perf_counter() - t0
    # --derivative-free: the sparse crossed LMM's COBYQA instead of its L-BFGS-B
    sparse = likelihood.uses_sparse_lmm(model.problem, get_method(method))
    options = {"optimizer": "cobyqa"} if derivative_free and sparse else {}
    t0 = time.perf_counter()
    fit = model.fit(method, **options)
    first = time.perf_counter() - t0
    warm = []
    for _ in range(repeats if cap is None else min(cap, repeats)):
        t0 = time.perf_counter()
        fit = model.fit(method, **options)
        warm.append(time.perf_counter() - t0)
    out = {"case": name, "nobs": int(fit.nobs), "design_s": design_s, "first_s": first,
           "warm_s": min(warm) if warm else float("nan"), "loglik": float(fit.loglik),
           "converged": bool(fit.converged), "sparse": sparse,
           # the fits' own peak, before the diagnostics below (which rebuild the system)
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if out["sparse"]:
        t0 = time.perf_counter()
        d = sparse_lmm_data(model.problem.structure, model.problem.arrays)
        out["system_build_s"] = time.perf_counter() - t0
        out["triplets"] = int(d.sp.triplet_position.shape[0])
        out["dense_block"] = int(d.sp.d22.shape[0])
        dev, _, _ = likelihood._sparse_lmm_programs(model.problem.structure, method == "reml")
        theta = jnp.asarray(fit.optinfo["x"])
        jax.block_until_ready(dev(d, theta))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(dev(d, theta))
            times.append(time.perf_counter() - t0)
        m = out["dense_block"]
        S = jnp.asarray(np.eye(m) * 2.0 + 1.0 / m)
        chol = jax.jit(lambda A: jax.lax.linalg.cholesky(A, symmetrize_input=False))
        jax.block_until_ready(chol(S))
        ct = []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(chol(S))
            ct.append(time.perf_counter() - t0)
        out["eval_ms"] = 1e3 * min(times)
        if not derivative_free and sps.scalar_blocks(model.problem.structure):
            # the optimizer's evaluations: deviance and closed-form gradient (L-BFGS-B)
            devgrad = likelihood._sparse_lmm_gradient_program(model.problem.structure,
                                                              method == "reml")
            jax.block_until_ready(devgrad(d, theta)[:2])
            gt = []
            for _ in range(3):
                t0 = time.perf_counter()
                jax.block_until_ready(devgrad(d, theta)[:2])
                gt.append(time.perf_counter() - t0)
            out["gradient_eval_ms"] = 1e3 * min(gt)
            out["optimizer"] = "L-BFGS-B, closed-form gradient"
        else:
            out["optimizer"] = "COBYQA"
        out["dense_cholesky_ms"] = 1e3 * min(ct)
        out["n_evals"] = int(fit.optinfo["n_iter"])      # the optimizer's evaluations
        out["n_evals_derivatives"] = 1 + 2 * theta.size + theta.size * (theta.size - 1) // 2
    out["peak_rss_with_diagnostics_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# ----------------------------------------------------------------------------- driver
def lme4_insteval(csv: str) -> dict | None:
    if shutil.which("Rscript") is None:
        print("Rscript not found: lme4 skipped; InstEval generated to the same shape",
              file=sys.stderr)
        return None
    r = subprocess.run(["Rscript", str(HERE / "bench_scale_lme4.R"), csv],
                       capture_output=True, text=True)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("lme4 ")]
    if r.returncode or not line:
        print("lme4 failed (skipped):", r.stderr.strip()[-500:], file=sys.stderr)
        return None
    _, _, secs, ll = line[-1].split()
    return {"seconds": float(secs), "loglik": float(ll)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(c[0] for c in CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--single-thread", action="store_true")
    ap.add_argument("--derivative-free", action="store_true")
    ap.add_argument("--case", help=argparse.SUPPRESS)        # child process: one case
    ap.add_argument("--csv", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, args.csv, args.repeats,
                                              args.derivative_free)))
        return
    tmp = tempfile.mkdtemp(prefix="bench_scale_")
    csv = os.path.join(tmp, "insteval.csv")
    names = args.cases.split(",")
    peer = lme4_insteval(csv) if "insteval" in names else None
    env = dict(os.environ)
    if args.single_thread:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
        env["OPENBLAS_NUM_THREADS"] = "1"
    rows = []
    for name in names:
        cmd = [sys.executable, __file__, "--case", name, "--repeats", str(args.repeats)]
        if args.derivative_free:
            cmd.append("--derivative-free")
        if name == "insteval" and peer is not None:
            cmd += ["--csv", csv]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        res = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
        if r.returncode or not res:
            print(f"{name}: failed\n{r.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(res[-1][7:])
        if name == "insteval" and peer is not None:
            row["lme4_s"] = peer["seconds"]
            row["lme4_loglik"] = peer["loglik"]
            row["loglik_minus_lme4"] = row["loglik"] - peer["loglik"]
            row["lme4_over_warm"] = peer["seconds"] / row["warm_s"]
            row["lme4_over_first"] = peer["seconds"] / row["first_s"]
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    print("\ncase        first s   warm s   peak RSS MB   evals  eval ms  grad ms  chol ms  "
          "loglik - lme4   lme4 s  lme4/warm")
    for r in rows:
        print(f"{r['case']:<10} {r['first_s']:8.2f} {r['warm_s']:8.2f} {r['peak_rss_mb']:12.0f} "
              f"{r.get('n_evals', -1):7d} {r.get('eval_ms', float('nan')):8.1f} "
              f"{r.get('gradient_eval_ms', float('nan')):8.1f} "
              f"{r.get('dense_cholesky_ms', float('nan')):8.1f} "
              f"{r.get('loglik_minus_lme4', float('nan')):14.3g} {r.get('lme4_s', float('nan')):8.2f} "
              f"{r.get('lme4_over_warm', float('nan')):9.2f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
