"""``jg.fit_many(..., checkpoint=DIR)``: each finished chunk is saved in DIR; a run stopped
midway (a chunk that raises) and called again fits only the missing chunks and returns the
same fits, to the last bit, as a run never stopped; a folder made for another formula or
other data is refused with one line.

Six sleepstudy simulations in chunks of two: one bucket shape, one compiled REML program.
"""
import numpy as np
import pandas as pd
import pytest

import jaxglmm as jg
from jaxglmm.many import batch
from test_many_executor import sleepstudy_sims

FORMULA = "Reaction ~ Days + (Days | Subject)"
N_SIMS, CHUNK = 6, 2


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return sleepstudy_sims(N_SIMS, seed=5)


@pytest.fixture(scope="module")
def uninterrupted(data):
    return jg.fit_many(FORMULA, data, by="sim", method="reml", chunk_size=CHUNK,
                       progress=False)


def counting(monkeypatch, fail_at: int | None = None) -> list:
    """Count the chunks fitted (``batch.fit_chunk`` calls); with ``fail_at``, that call
    raises instead (a run that stops there)."""
    calls = []
    fit = batch.fit_chunk

    def fit_chunk(payload):
        calls.append(payload.ids)
        if len(calls) == fail_at:
            raise RuntimeError("stopped on purpose")
        return fit(payload)

    monkeypatch.setattr(batch, "fit_chunk", fit_chunk)
    return calls


def chunk_files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("chunk-"))


def assert_same_fits(fits, expected):
    pd.testing.assert_frame_equal(fits.table(), expected.table(), check_exact=True)
    pd.testing.assert_frame_equal(fits.wide(), expected.wide(), check_exact=True)
    np.testing.assert_array_equal(fits.theta, expected.theta)


def test_a_stopped_run_resumes_to_the_same_fits(data, uninterrupted, tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    with monkeypatch.context() as patch:
        calls = counting(patch, fail_at=2)
        with pytest.raises(RuntimeError, match="stopped on purpose"):
            jg.fit_many(FORMULA, data, by="sim", method="reml", chunk_size=CHUNK,
                        progress=False, checkpoint=folder)
    assert chunk_files(folder) == ["chunk-000000.npz"] and (folder / "plan.json").is_file()

    with monkeypatch.context() as patch:
        calls = counting(patch)
        fits = jg.fit_many(FORMULA, data, by="sim", method="reml", chunk_size=CHUNK,
                           progress=False, checkpoint=str(folder))
    assert calls == [["s2", "s3"], ["s4", "s5"]]          # chunk 0 was read back
    assert_same_fits(fits, uninterrupted)
    assert chunk_files(folder) == [f"chunk-00000{k}.npz" for k in range(3)]
    # a dataset of the saved chunk, in full
    one, expected = fits.result(1), uninterrupted.result(1)
    np.testing.assert_array_equal(one.fixef, expected.fixef)
    assert one.loglik == expected.loglik
    pd.testing.assert_frame_equal(one.ranef_long(), expected.ranef_long(), check_exact=True)

    # a lost chunk file: that chunk alone is fitted again; no chunk_size: the saved one
    (folder / "chunk-000001.npz").unlink()
    with monkeypatch.context() as patch:
        calls = counting(patch)
        again = jg.fit_many(FORMULA, data, by="sim", method="reml", progress=False,
                            checkpoint=folder)
    assert calls == [["s2", "s3"]]
    assert_same_fits(again, uninterrupted)


@pytest.fixture
def saved(data, tmp_path):
    """A checkpoint folder of a finished run, its first chunk only (the rest deleted)."""
    folder = tmp_path / "ckpt"
    jg.fit_many(FORMULA, data, by="sim", method="reml", chunk_size=CHUNK, progress=False,
                checkpoint=folder)
    for name in chunk_files(folder)[1:]:
        (folder / name).unlink()
    return folder


@pytest.mark.parametrize("change, named", [
    ({"formula": "Reaction ~ Days + (1 | Subject)"}, "formula"),
    ({"method": "ml"}, "method"),
    ({"chunk_size": 3}, "chunk_size"),
    ({"shift": 1.0}, "data"),
])
def test_a_folder_of_another_run_is_refused_in_one_line(data, saved, monkeypatch, change,
                                                         named):
    kwargs = {"method": "reml", "chunk_size": CHUNK, **change}
    formula = kwargs.pop("formula", FORMULA)
    other = data.copy()
    other.loc[3, "Reaction"] += kwargs.pop("shift", 0.0)
    calls = counting(monkeypatch)
    with pytest.raises(ValueError) as caught:
        jg.fit_many(formula, other, by="sim", progress=False, checkpoint=saved, **kwargs)
    line = str(caught.value)
    assert "\n" not in line and "different fit-many run" in line and named in line
    assert str(saved) in line and "delete" in line
    assert calls == [] and chunk_files(saved) == ["chunk-000000.npz"]   # kept


def test_bad_checkpoint_arguments_are_one_line(data, saved, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        jg.fit_many(FORMULA, data, by="sim", chunk_size=CHUNK, checkpoint=afile)
    with pytest.raises(TypeError, match="checkpoint must be a folder path"):
        jg.fit_many(FORMULA, data, by="sim", chunk_size=CHUNK, checkpoint=3)
    (saved / "chunk-000000.npz").write_bytes(b"not an npz file")
    with pytest.raises(ValueError, match="cannot read .*chunk-000000.npz.*delete it") as caught:
        jg.fit_many(FORMULA, data, by="sim", method="reml", chunk_size=CHUNK,
                    checkpoint=saved)
    assert "\n" not in str(caught.value)


def test_a_batch_refuses_a_host_optimizer_rather_than_replacing_it():
    """fit_many and refit_many run the compiled BFGS for every dataset: a host optimizer
    named for them is an error, not silently swapped for BFGS."""
    import jaxglmm as jg
    df = jg.load_dataset("sleepstudy")
    long = pd.concat([df.assign(sim=k) for k in range(2)])
    with pytest.raises(ValueError, match="fit_many fits every dataset with the compiled BFGS"):
        jg.fit_many("Reaction ~ Days + (1 | Subject)", long, by="sim", optimizer="lbfgsb")
    model = jg.Model("Reaction ~ Days + (1 | Subject)", df)
    with pytest.raises(ValueError, match="refit_many fits every dataset"):
        jg.refit_many(model, np.tile(df.Reaction.to_numpy(), (2, 1)), optimizer="cobyqa")
