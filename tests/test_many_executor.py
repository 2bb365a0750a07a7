"""Where fit_many's chunks run (jaxglmm.many.executor.run_chunks): here, or on a Dask cluster
(a two-worker LocalCluster of processes), including a worker that dies mid-chunk.

The functions sent to the workers are defined here at module level: cloudpickle sends them
by reference, and the spawned workers import this module (tests/ is on the path they
inherit); ``test_workers_can_import_this_module`` checks that first.
"""
import concurrent.futures
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg
from jaxglmm.many import executor as executor_module
from jaxglmm.many.executor import run_chunks


# ----------------------------------------------------------------------------- toy tasks
def square(payload):
    k, delay = payload
    time.sleep(delay)
    return k * k


def fail_on_three(k):
    if k == 3:
        raise ValueError("bad chunk on purpose")
    return k


def die_once(payload):
    """Kill this worker process the first time chunk ``victim`` runs (the marker file says
    it has died once); otherwise return the chunk index and the worker's process id."""
    k, victim, marker = payload
    if k == victim:
        try:
            with open(marker, "x"):
                pass
        except FileExistsError:
            pass
        else:
            os._exit(1)
    time.sleep(0.2)
    return k, os.getpid()


def where_am_i(_):
    import sys
    return os.getpid(), list(sys.path)


# ----------------------------------------------------------------------------- here
def test_local_run_returns_results_in_order_and_calls_done_once_each(capsys):
    calls = []
    out = run_chunks(square, [(k, 0.0) for k in range(5)], progress=False,
                     done=lambda k, r: calls.append((k, r)))
    assert out == [0, 1, 4, 9, 16]
    assert calls == [(k, k * k) for k in range(5)]
    assert capsys.readouterr().err == ""


def test_progress_bar_counts_datasets_on_stderr(capsys):
    run_chunks(square, [(k, 0.0) for k in range(3)], progress=True, sizes=[4, 4, 2],
               desc="datasets")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "datasets" in captured.err and "10/10" in captured.err


def test_progress_none_is_off_when_stderr_is_not_a_terminal(capsys):
    run_chunks(square, [(0, 0.0)], progress=None)
    assert capsys.readouterr().err == ""    # pytest's captured stderr is not a TTY


def test_a_local_chunk_error_is_raised_as_it_is_with_the_chunk_in_a_note():
    with pytest.raises(ValueError, match="bad chunk on purpose") as info:
        run_chunks(fail_on_three, range(5), progress=False)
    assert any("chunk 3" in note for note in info.value.__notes__)


def test_empty_payloads_give_an_empty_list():
    assert run_chunks(square, [], progress=False) == []


@pytest.mark.parametrize("bad", [concurrent.futures.ThreadPoolExecutor, lambda: "tcp://x:8786"])
def test_an_executor_that_is_not_a_dask_client_is_a_type_error(bad):
    thing = bad()
    with pytest.raises(TypeError) as info:
        run_chunks(square, [(0, 0.0)], executor=thing, progress=False)
    message = str(info.value)
    assert "dask.distributed.Client" in message and "None" in message
    assert type(thing).__name__ in message
    if isinstance(thing, concurrent.futures.Executor):
        thing.shutdown()


def test_without_dask_the_error_says_how_to_install_it(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_dask(name, *args, **kwargs):
        if name.split(".")[0] in ("dask", "distributed"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    with pytest.raises(TypeError, match=r"pip install jaxglmm\[dask\]"):
        executor_module._client(object())


def test_sizes_must_match_the_payloads():
    with pytest.raises(ValueError, match="sizes has 2 entries for 3 payloads"):
        run_chunks(square, [(k, 0.0) for k in range(3)], progress=False, sizes=[1, 2])


# ----------------------------------------------------------------------------- on a cluster
@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_workers_can_import_this_module(client):
    """The toy tasks above run in the worker processes, which import this module."""
    for pid, path in client.gather([client.submit(where_am_i, k, pure=False)
                                    for k in range(2)]):
        assert pid != os.getpid()
        assert str(Path(__file__).parent) in path


def test_cluster_results_equal_the_local_run(client):
    payloads = [(k, 0.05) for k in range(8)]
    calls = []
    out = run_chunks(square, payloads, executor=client, progress=False,
                     done=lambda k, r: calls.append((k, r)))
    assert out == run_chunks(square, payloads, progress=False)
    assert sorted(calls) == [(k, k * k) for k in range(8)]


def test_a_cluster_task_error_names_its_chunk(client):
    with pytest.raises(ValueError, match=r"^chunk 3 of 6: bad chunk on purpose"):
        run_chunks(fail_on_three, range(6), executor=client, progress=False)


def test_a_worker_that_dies_loses_and_duplicates_nothing(client, tmp_path):
    marker = tmp_path / "died"
    payloads = [(k, 2, str(marker)) for k in range(8)]
    calls = []
    out = run_chunks(die_once, payloads, executor=client, progress=False,
                     done=lambda k, r: calls.append(k))
    assert marker.exists()                  # chunk 2's first worker did die
    assert [k for k, _ in out] == list(range(8))
    assert sorted(calls) == list(range(8))  # done once per chunk, none twice
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it


# ----------------------------------------------------------------------------- fit_many
def sleepstudy_sims(n: int, seed: int = 3) -> pd.DataFrame:
    """``n`` simulated copies of sleepstudy (new residuals), stacked with a ``sim`` column."""
    base = jg.load_dataset("sleepstudy")
    rng = np.random.default_rng(seed)
    frames = []
    for sim in range(n):
        frame = base.copy()
        frame["Reaction"] = (frame["Reaction"] + rng.normal(0, 25, len(frame))).round(3)
        frame.insert(0, "sim", f"s{sim}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def test_fit_many_on_a_cluster_equals_the_local_fit(client):
    data = sleepstudy_sims(6)
    formula = "Reaction ~ Days + (Days | Subject)"
    here = jg.fit_many(formula, data, by="sim", method="reml", chunk_size=2, progress=False)
    assert len(here.chunks) == 3
    there = jg.fit_many(formula, data, by="sim", method="reml", chunk_size=2,
                        executor=client, progress=False)
    a, b = here.wide(), there.wide()
    assert a["dataset"].tolist() == b["dataset"].tolist() == [f"s{k}" for k in range(6)]
    columns = ["Intercept", "Days", "loglik"]
    np.testing.assert_allclose(b[columns].to_numpy(), a[columns].to_numpy(), rtol=0,
                               atol=1e-10)
    assert b["converged"].tolist() == a["converged"].tolist()
