"""Benchmark: NUTS on sleepstudy, jaxglmm against brms and bambi, timed side by side in one run.

Model: ``Reaction ~ Days + (Days | Subject)``, gaussian, 4 chains x 1000 warmup x 1000 draws,
each tool with its default priors.  Each tool runs in its own fresh process (an Rscript, or a
fresh Python with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` set before JAX
starts, so that the four chains can run as parallel devices on the CPU; ``JAX_PLATFORMS``
defaults to ``cpu`` there, the machine brms runs on):

* total    wall time of the first model build + fit in that process (brms: the whole
           ``brm()`` call, i.e. brms's Stan code generation, the Stan C++ compile and
           sampling; bambi: ``bmb.Model`` + ``fit``; jaxglmm: ``jg.Model`` + ``fit``, where
           tracing and XLA compilation happen);
* sampling wall time of a second, identical fit in the same process (brms:
           ``update(fit, recompile = FALSE)``; the Python tools: the same calls again);
* compile  total - sampling;
* warm 10+10 fit (Python tools, in the notes): a third fit with 10 warmup + 10 draws, the
           fixed cost of a fit that is not sampling (re-tracing and re-compiling the sampler,
           post-processing); where it is large, "sampling" overstates the sampling itself and
           "compile" understates the compilation;
* min ESS  the smallest bulk-ESS of the population parameters of the first fit (brms
           ``posterior::ess_bulk``, bambi ArviZ's ``ess(method="bulk")``, jaxglmm its own
           numpy port of it, tested equal to ArviZ's; all are the rank-normalised bulk ESS
           of Vehtari et al. 2021).

Two jaxglmm rows: ``jaxglmm`` is the default, which for a gaussian model samples the
population parameters with the random effects integrated out exactly and draws the random
effects from their exact conditional per draw; ``jaxglmm-joint`` (``marginalize=False``)
samples the random effects jointly on brms's non-centred parameterization, as jaxglmm does
for every other family.  Ratios are against the default row.

Ratios are peer/jaxglmm: on total time > 1 means jaxglmm is faster, on ESS per second of total
< 1 means jaxglmm is more efficient.

Run: python scripts/bench_nuts.py [--skip-brms] [--skip-bambi] [--warmup 1000] [--draws 1000]
                                  [--bambi-python PATH]

Peers (benchmark-only, not project dependencies); a missing or failing peer prints why and
the benchmark goes on:

* brms: ``Rscript`` with r-cran-brms (brms 2.18 / rstan 2.21, ``cores = 2``).  If Stan's
  compile stops with "Boost not found", point BH's include path at Debian's Boost:
  ``mkdir -p /usr/lib/R/site-library/BH/include &&
  ln -s /usr/include/boost /usr/lib/R/site-library/BH/include/boost``.
* bambi: ``pip install bambi`` (run with its NumPyro backend, ``inference_method="numpyro"``,
  chain_method "parallel").  bambi 0.17 pins formulae 0.6, which would replace the
  formulae 0.9 that jaxglmm pins, so install it in a separate environment that sees the
  system packages and point ``--bambi-python`` (or ``$BAMBI_PYTHON``) at it::

      python -m venv --system-site-packages /tmp/bench-bambi-venv
      /tmp/bench-bambi-venv/bin/pip install bambi
      python scripts/bench_nuts.py --bambi-python /tmp/bench-bambi-venv/bin/python

  arviz-plots 0.8 (a bambi dependency) calls ``matplotlib.style.core``, which matplotlib
  3.11 no longer has; the bambi worker aliases it to ``matplotlib.style`` before importing
  bambi.  bambi models the group-level effects of ``(Days | Subject)`` as independent
  (separate ``1|Subject_sigma`` and ``Days|Subject_sigma``, no correlation parameter), so
  its model is the uncorrelated one (lme4's ``(Days || Subject)``) and its min ESS is over
  five population parameters, not six.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORMULA = "Reaction ~ Days + (Days | Subject)"
CHAINS = 4
JG_PARAMS = ["b_Intercept", "b_Days", "sd_Subject__Intercept", "sd_Subject__Days",
             "cor_Subject__Intercept__Days", "sigma"]
BAMBI_PARAMS = ["Intercept", "Days", "1|Subject_sigma", "Days|Subject_sigma", "sigma"]
XLA_FLAG = f"--xla_force_host_platform_device_count={CHAINS}"

R_SCRIPT = r"""
suppressMessages({library(brms); library(posterior)})
args <- commandArgs(trailingOnly = TRUE)
warmup <- as.integer(args[1]); draws <- as.integer(args[2]); csv <- args[3]
ss <- read.csv(csv, colClasses = c(Subject = "character"))
t0 <- proc.time()[["elapsed"]]
fit <- brm(Reaction ~ Days + (Days | Subject), data = ss, chains = 4, cores = 2,
           iter = warmup + draws, warmup = warmup, seed = 1, refresh = 0, silent = 2)
total <- proc.time()[["elapsed"]] - t0
t0 <- proc.time()[["elapsed"]]
fit2 <- update(fit, recompile = FALSE, chains = 4, cores = 2, iter = warmup + draws,
               warmup = warmup, seed = 1, refresh = 0, silent = 2)
warm <- proc.time()[["elapsed"]] - t0
el <- rstan::get_elapsed_time(fit$fit)
pars <- c("b_Intercept", "b_Days", "sd_Subject__Intercept", "sd_Subject__Days",
          "cor_Subject__Intercept__Days", "sigma")
s <- summarise_draws(subset_draws(as_draws_array(fit), variable = pars), "ess_bulk")
np <- nuts_params(fit)
div <- sum(np$Value[np$Parameter == "divergent__"])
cat(sprintf('{"total": %.6f, "warm": %.6f, "stan_chain_seconds": %.6f, "min_ess": %.6f, "min_ess_param": "%s", "divergences": %d, "version": "brms %s / rstan %s"}\n',
            total, warm, sum(el), min(s$ess_bulk), s$variable[which.min(s$ess_bulk)], as.integer(div),
            as.character(packageVersion("brms")), as.character(packageVersion("rstan"))))
"""


def sleepstudy_csv() -> Path:
    spec = importlib.util.find_spec("jaxglmm")  # no import: keep JAX out of this process
    return Path(spec.origin).parent / "datasets" / "sleepstudy.csv"


def last_json(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON result line in the output")


def fail_reason(proc: subprocess.CompletedProcess) -> str:
    text = (proc.stderr or "").strip() or (proc.stdout or "").strip()
    return text[-1200:]


# --------------------------------------------------------------------------- workers
def jaxglmm_worker(warmup: int, draws: int, joint: bool = False) -> None:
    import jaxglmm as jg
    data = jg.load_dataset("sleepstudy")
    opts = dict(chains=CHAINS, warmup=warmup, draws=draws, seed=1, progress=False)
    if joint:
        opts["marginalize"] = False
    t0 = time.perf_counter()
    fit = jg.Model(FORMULA, data).fit("nuts", **opts)
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    jg.Model(FORMULA, data).fit("nuts", **opts)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()  # per-fit fixed cost: a warm fit with almost no iterations
    jg.Model(FORMULA, data).fit("nuts", **{**opts, "warmup": 10, "draws": 10})
    tiny = time.perf_counter() - t0
    ess = fit.posterior_summary.loc[JG_PARAMS, "ess_bulk"].astype(float)
    import jax
    print(json.dumps({"total": total, "warm": warm, "tiny": tiny, "min_ess": float(ess.min()),
                      "min_ess_param": str(ess.idxmin()),
                      "divergences": int(fit.diagnostics["divergences"]),
                      "chain_method": fit.diagnostics["chain_method"],
                      "marginalized": fit.diagnostics["marginalized"],
                      "devices": len(jax.devices()),
                      "version": f"jaxglmm {jg.__version__ if hasattr(jg, '__version__') else ''}"
                                 f" / jax {jax.__version__}"}))


def bambi_worker(warmup: int, draws: int, csv: str) -> None:
    import warnings
    warnings.filterwarnings("ignore")
    import matplotlib.style as mstyle
    if not hasattr(mstyle, "core"):  # arviz-plots 0.8 vs matplotlib >= 3.11
        mstyle.core = mstyle
    import arviz as az
    import bambi as bmb
    import jax
    import numpy as np
    import pandas as pd
    data = pd.read_csv(csv, dtype={"Subject": str})

    def run(warmup=warmup, draws=draws):
        model = bmb.Model(FORMULA, data)
        return model.fit(inference_method="numpyro", chains=CHAINS, tune=warmup, draws=draws,
                         random_seed=1, progressbar=False)

    t0 = time.perf_counter()
    idata = run()
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    run()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(10, 10)
    tiny = time.perf_counter() - t0
    names = [p for p in BAMBI_PARAMS if p in idata.posterior]
    ess = az.ess(idata, var_names=names, method="bulk")
    vals = {p: float(ess[p]) for p in names}
    worst = min(vals, key=vals.get)
    print(json.dumps({"total": total, "warm": warm, "tiny": tiny, "min_ess": vals[worst],
                      "min_ess_param": worst,
                      "divergences": int(np.sum(idata.sample_stats["diverging"].values)),
                      "params": names, "devices": len(jax.devices()),
                      "correlation_modelled": any("cor" in v.lower() for v in idata.posterior),
                      "version": f"bambi {bmb.__version__} / jax {jax.__version__}"}))


# --------------------------------------------------------------------------- drivers
def worker_env() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + XLA_FLAG).strip()
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def run_jaxglmm(args, worker: str = "jaxglmm") -> dict | None:
    proc = subprocess.run([sys.executable, __file__, "--_worker", worker, "--warmup",
                           str(args.warmup), "--draws", str(args.draws)],
                          capture_output=True, text=True, env=worker_env())
    if proc.returncode != 0:
        print("jaxglmm run failed:\n" + fail_reason(proc))
        return None
    return last_json(proc.stdout)


def run_bambi(args, csv: Path) -> dict | None:
    py = args.bambi_python
    probe = subprocess.run([py, "-c", "import importlib.util as u; "
                                      "print(u.find_spec('bambi') is not None)"],
                           capture_output=True, text=True)
    if probe.returncode != 0 or probe.stdout.strip() != "True":
        print(f"bambi skipped: not installed for {py} (pip install bambi; see this script's "
              "docstring for a separate environment)")
        return None
    proc = subprocess.run([py, __file__, "--_worker", "bambi", "--warmup", str(args.warmup),
                           "--draws", str(args.draws), "--csv", str(csv)],
                          capture_output=True, text=True, env=worker_env())
    if proc.returncode != 0:
        print("bambi skipped: run failed:\n" + fail_reason(proc))
        return None
    try:
        return last_json(proc.stdout)
    except ValueError as e:
        print(f"bambi skipped: {e}")
        return None


def run_brms(args, csv: Path) -> dict | None:
    if shutil.which("Rscript") is None:
        print("brms skipped: Rscript not found (install r-cran-brms to compare)")
        return None
    probe = subprocess.run(["Rscript", "-e", "for (p in c('brms', 'rstan', 'posterior')) "
                            "if (!requireNamespace(p, quietly = TRUE)) stop('R package ', p, "
                            "' not installed')"], capture_output=True, text=True)
    if probe.returncode != 0:
        print("brms skipped: " + fail_reason(probe))
        return None
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bench_nuts.R"
        script.write_text(R_SCRIPT)
        proc = subprocess.run(["Rscript", str(script), str(args.warmup), str(args.draws),
                               str(csv)], capture_output=True, text=True)
    if proc.returncode != 0:
        msg = fail_reason(proc)
        if "boost" in msg.lower():
            msg += ("\n(Boost: mkdir -p /usr/lib/R/site-library/BH/include && ln -s "
                    "/usr/include/boost /usr/lib/R/site-library/BH/include/boost)")
        print("brms skipped: run failed:\n" + msg)
        return None
    try:
        return last_json(proc.stdout)
    except ValueError as e:
        print(f"brms skipped: {e}\n{fail_reason(proc)}")
        return None


def fmt(x, spec, width):
    return f"{'-':>{width}}" if x is None else f"{x:>{width}{spec}}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-brms", action="store_true")
    ap.add_argument("--skip-bambi", action="store_true")
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--bambi-python", default=os.environ.get("BAMBI_PYTHON", sys.executable),
                    help="Python interpreter with bambi installed (default: $BAMBI_PYTHON "
                         "or this one)")
    ap.add_argument("--csv", help=argparse.SUPPRESS)
    ap.add_argument("--_worker", choices=["jaxglmm", "jaxglmm-joint", "bambi"],
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker in ("jaxglmm", "jaxglmm-joint"):
        jaxglmm_worker(args.warmup, args.draws, joint=args._worker == "jaxglmm-joint")
        return 0
    if args._worker == "bambi":
        bambi_worker(args.warmup, args.draws, args.csv)
        return 0

    csv = sleepstudy_csv()
    print(f"sleepstudy {FORMULA}: {CHAINS} chains x {args.warmup} warmup x {args.draws} draws, "
          f"{os.cpu_count()} CPU cores")
    runners = {"jaxglmm": (False, lambda: run_jaxglmm(args)),
               "jaxglmm-joint": (False, lambda: run_jaxglmm(args, "jaxglmm-joint")),
               "bambi": (args.skip_bambi, lambda: run_bambi(args, csv)),
               "brms": (args.skip_brms, lambda: run_brms(args, csv))}
    results = {}
    for tool, (skip, runner) in runners.items():
        if skip:
            print(f"{tool} skipped: --skip-{tool}")
            continue
        t0 = time.perf_counter()
        try:
            results[tool] = runner()
        except Exception as e:  # a peer (or a worker) that cannot even start
            print(f"{tool} skipped: {type(e).__name__}: {e}")
            results[tool] = None
        print(f"  {tool} done ({time.perf_counter() - t0:.0f} s)")

    jg_res = results.get("jaxglmm")
    jg_eps = jg_res["min_ess"] / jg_res["total"] if jg_res else None
    print(f"\n{'tool':<14}{'total s':>9}{'compile s':>11}{'sampling s':>12}{'min ESS':>9}"
          f"{'ESS/s':>8}{'total ratio':>13}{'ESS/s ratio':>13}  notes")
    for tool in ("jaxglmm", "jaxglmm-joint", "bambi", "brms"):
        if tool not in results:
            continue
        r = results[tool]
        if r is None:
            print(f"{tool:<14}{'skipped (see above)':>40}")
            continue
        eps = r["min_ess"] / r["total"]
        if tool == "jaxglmm" or jg_res is None:
            ratios = f"{'':>13}{'':>13}"
        else:
            ratios = f"{r['total'] / jg_res['total']:>13.2f}{eps / jg_eps:>13.2f}"
        notes = [r.get("version", ""), f"min at {r['min_ess_param']}",
                 f"divergences {r['divergences']}"]
        if "tiny" in r:
            notes.append(f"warm 10+10 fit {r['tiny']:.1f} s")
        if tool.startswith("jaxglmm"):
            notes.append(f"chain_method {r['chain_method']} on {r['devices']} devices")
            notes.append("u integrated out, drawn from its exact conditional" if r["marginalized"]
                         else "u sampled jointly (non-centred)")
        if tool == "bambi":
            notes.append(f"{len(r['params'])} params, correlation modelled: "
                         f"{r['correlation_modelled']}")
        if tool == "brms":
            notes.append(f"Stan chain seconds summed {r['stan_chain_seconds']:.1f}")
        print(f"{tool:<14}{r['total']:>9.1f}{r['total'] - r['warm']:>11.1f}{r['warm']:>12.1f}"
              f"{r['min_ess']:>9.0f}{eps:>8.1f}{ratios}  " + "; ".join(notes))
    print("\nratios are peer/jaxglmm: total ratio > 1 means jaxglmm finishes sooner; ESS/s ratio "
          "< 1 means jaxglmm gives more effective draws per second.\ncompile = total - sampling, "
          "sampling = a second identical fit in the same process.  'warm 10+10 fit': a third fit\n"
          "with 10 warmup + 10 draws, i.e. what a warm fit costs besides sampling (re-tracing,\n"
          "re-compiling, post-processing); where it is large, 'sampling s' overstates sampling.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
