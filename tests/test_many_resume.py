"""``jaxglmm fit-many`` saves each finished chunk in OUTPUT/chunks/ (the checkpoint of
``jg.fit_many(..., checkpoint=)``, tests/test_many_checkpoint.py) and resumes: a run killed
midway (SIGKILL, in a subprocess) and run again ends with the same table, to the last bit,
as a run never stopped; a changed config refuses the old chunks; Parquet output too.

The datasets are 12 simulations of the bundled sleepstudy (new residuals), fitted in
chunks of 3 with one compiled REML program (the module compiles it once).
"""
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import jaxglmm as jg
from jaxglmm.cli import main
from jaxglmm.many.checkpoint import Checkpoint
from test_many_executor import sleepstudy_sims as executor_sims

N_SIMS, CHUNK = 12, 3
N_CHUNKS = N_SIMS // CHUNK
RUN = {"data": "sims.csv", "split_by": "sim", "formula": "Reaction ~ Days + (Days | Subject)",
       "method": "reml", "chunk_size": CHUNK, "progress": False}


def sleepstudy_sims(n: int = N_SIMS, seed: int = 11) -> pd.DataFrame:
    return executor_sims(n, seed)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("resume")
    sleepstudy_sims().to_csv(folder / "sims.csv", index=False)
    return folder


def write_config(folder: Path, name: str, **changes) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**RUN, "output": f"out_{name}", **changes},
                                   sort_keys=False))
    return path


def run(config: Path, *args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["fit-many", str(config), *args])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def uninterrupted(folder) -> Path:
    """The output folder of a run never stopped."""
    status, out, err = run(write_config(folder, "full"))
    assert status == 0, err
    assert f"{N_SIMS} datasets" in out and err == ""
    return folder / "out_full"


def interrupt_after_first_chunk(monkeypatch):
    """An in-process Ctrl-C just after chunk 0 is saved."""
    save = Checkpoint.save

    def save_then_stop(self, k, fits):
        save(self, k, fits)
        raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", save_then_stop)


def chunk_files(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "chunks").iterdir() if p.name.startswith("chunk-"))


# ----------------------------------------------------------------------------- the table
def test_an_uninterrupted_run_writes_one_row_per_dataset_and_no_chunks(uninterrupted):
    assert sorted(p.name for p in uninterrupted.iterdir()) == ["config.yaml", "fits.csv"]
    fits = pd.read_csv(uninterrupted / "fits.csv", dtype={"dataset": str})
    assert fits["dataset"].tolist() == [f"s{k}" for k in range(N_SIMS)]
    assert list(fits.columns) == ["dataset", "Intercept", "Days", "loglik", "converged",
                                  "message"]
    assert fits["converged"].all()
    resolved = yaml.safe_load((uninterrupted / "config.yaml").read_text())
    assert resolved["chunk_size"] == CHUNK and resolved["format"] == "csv"
    # Row 4 is that simulation's own fit.
    data = sleepstudy_sims()
    one = jg.fit(RUN["formula"], data[data["sim"] == "s4"].reset_index(drop=True),
                 method="reml")
    assert fits.loc[4, "Days"] == pytest.approx(one.fixef["Days"], rel=1e-6)
    assert fits.loc[4, "loglik"] == pytest.approx(one.loglik, rel=1e-8)


# ----------------------------------------------------------------------------- SIGKILL
# The killed run is the CLI's own main() in a fresh interpreter, with each chunk's fit held
# back one second: killed as soon as the first chunk file appears, it cannot have finished.
SLOW_CLI = """
import sys, time
import jaxglmm.cli as cli
import jaxglmm.many.batch as batch
fit = batch.fit_chunk
def slow(payload):
    time.sleep(1.0)
    return fit(payload)
batch.fit_chunk = slow
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_killed_run_resumes_to_the_same_table(folder, uninterrupted):
    config = write_config(folder, "killed")
    out = folder / "out_killed"
    process = subprocess.Popen([sys.executable, "-c", SLOW_CLI, "fit-many", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while not (out / "chunks").is_dir() or not chunk_files(out):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no chunk was saved in 240 s"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "fits.csv").exists()
    assert (out / "chunks" / "plan.json").is_file()
    saved = chunk_files(out)
    assert 1 <= len(saved) < N_CHUNKS, saved
    # A write the kill cut short: a temporary file, which the rerun removes.
    (out / "chunks" / ".chunk-000003.npz.tmp-99999-deadbeef").write_text("dataset,Interc")

    status, stdout, err = run(config)
    assert status == 0, err
    assert err.strip() == (f"jaxglmm: resuming from {out / 'chunks'}: {len(saved)} of "
                           f"{N_CHUNKS} chunks already fitted, {N_CHUNKS - len(saved)} to go")
    assert f"{N_CHUNKS - len(saved)} fitted by an earlier run" not in stdout
    assert f"{len(saved)} fitted by an earlier run" in stdout
    assert (out / "fits.csv").read_bytes() == (uninterrupted / "fits.csv").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "fits.csv"]


# ----------------------------------------------------------------------------- mismatches
@pytest.fixture
def stopped(folder, tmp_path, monkeypatch) -> Path:
    """A config (in its own folder) whose run was stopped by Ctrl-C after its first chunk."""
    (tmp_path / "sims.csv").write_bytes((folder / "sims.csv").read_bytes())
    config = write_config(tmp_path, "stopped")
    with monkeypatch.context() as patch:
        interrupt_after_first_chunk(patch)
        status, _, err = run(config)
    assert status == 130, err
    assert err.strip().endswith("run the same command again to fit the rest"), err
    assert chunk_files(tmp_path / "out_stopped") == ["chunk-000000.npz"]
    return config


@pytest.mark.parametrize("change, named", [
    ({"formula": "Reaction ~ Days + (1 | Subject)"}, "formula"),
    ({"chunk_size": 4}, "chunk_size"),
    ({"method": "ml"}, "method"),
])
def test_a_changed_config_refuses_the_saved_chunks(stopped, change, named):
    record = yaml.safe_load(stopped.read_text())
    stopped.write_text(yaml.safe_dump({**record, **change}, sort_keys=False))
    status, _, err = run(stopped)
    assert status == 2
    line = err.strip()
    assert "\n" not in line and line.startswith("jaxglmm: error: ")
    assert "different fit-many run" in line and named in line
    assert "choose another output folder" in line and "delete" in line and "chunks" in line
    assert chunk_files(stopped.parent / "out_stopped") == ["chunk-000000.npz"]   # kept


def test_changed_data_refuses_the_saved_chunks(stopped):
    data = sleepstudy_sims()
    data.loc[5, "Reaction"] += 1.0
    data.to_csv(stopped.parent / "sims.csv", index=False)
    status, _, err = run(stopped)
    assert status == 2 and "different fit-many run" in err and "data" in err


def test_a_stopped_run_with_the_same_config_resumes(stopped, uninterrupted):
    status, _, err = run(stopped)
    assert status == 0, err
    assert "1 of 4 chunks already fitted" in err
    assert (stopped.parent / "out_stopped" / "fits.csv").read_bytes() == \
        (uninterrupted / "fits.csv").read_bytes()


# ----------------------------------------------------------------------------- parquet
def test_parquet_output_resumes_to_the_same_table(folder, uninterrupted, monkeypatch):
    pytest.importorskip("pyarrow")
    config = write_config(folder, "parquet", format="parquet")
    with monkeypatch.context() as patch:
        interrupt_after_first_chunk(patch)
        assert run(config)[0] == 130
    assert chunk_files(folder / "out_parquet") == ["chunk-000000.npz"]
    status, _, err = run(config)
    assert status == 0, err
    out = folder / "out_parquet"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "fits.parquet"]
    fits = pd.read_parquet(out / "fits.parquet")
    expected = pd.read_csv(uninterrupted / "fits.csv", dtype={"dataset": str},
                           keep_default_na=False)
    pd.testing.assert_frame_equal(fits, expected, check_exact=True)


# ----------------------------------------------------------------------------- bad keys
@pytest.mark.parametrize("change, expected", [
    ({"chunk_size": 0}, "config key 'chunk_size': expected an integer >= 1, got 0"),
    ({"chunk_size": "3"}, "config key 'chunk_size': expected an integer, got '3'"),
    ({"format": "xlsx"}, "config key 'format': input should be 'csv' or 'parquet'"),
    ({"executor": "tcp://localhost:8786"}, "executor must be a mapping {scheduler: ADDRESS}"),
    ({"executor": {"address": "tcp://localhost:8786"}}, "'executor.address' is not allowed"),
    ({"progress": "sometimes"}, "config key 'progress': expected true or false"),
])
def test_bad_fit_many_keys_are_one_line_errors(folder, change, expected):
    config = write_config(folder, "bad", **change)
    status, _, err = run(config)
    assert status == 2 and err.count("\n") == 1, err
    assert expected in err
    assert not (folder / "out_bad").exists()


# ----------------------------------------------------------------------------- a cluster
def test_an_executor_key_fits_the_chunks_on_a_dask_cluster(folder, uninterrupted):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=40) as cluster:
        config = write_config(folder, "dask", executor={"scheduler": cluster.scheduler_address})
        status, _, err = run(config)
    assert status == 0, err
    assert (folder / "out_dask" / "fits.csv").read_bytes() == \
        (uninterrupted / "fits.csv").read_bytes()


def test_a_rerun_without_chunk_size_goes_on_with_the_saved_one(stopped, uninterrupted):
    record = yaml.safe_load(stopped.read_text())
    del record["chunk_size"]
    stopped.write_text(yaml.safe_dump(record, sort_keys=False))
    status, _, err = run(stopped)
    assert status == 0 and "1 of 4 chunks already fitted" in err, err
    assert (stopped.parent / "out_stopped" / "fits.csv").read_bytes() == \
        (uninterrupted / "fits.csv").read_bytes()
