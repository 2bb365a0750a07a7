"""Every notebook in notebooks/ runs top to bottom (its code cells, in order, in one
namespace), so the examples users open cannot rot.  Slow: the quickstart fits NUTS, MAP
and VI."""
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
    monkeypatch.chdir(path.parent)
    nb = json.loads(path.read_text())
    namespace = {"__name__": "__notebook__"}
    ran = 0
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        try:
            exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)
        except Exception as e:   # name the cell that failed
            raise AssertionError(f"{path.name}, cell {i} failed: {e!r}\n{source}") from e
        ran += 1
    assert ran >= 5
    # the quickstart's fits agree with lme4 and with each other
    if path.name == "quickstart.ipynb":
        fit, post, boot = namespace["fit"], namespace["post"], namespace["boot"]
        assert abs(fit.fixef["Days"] - 10.467286) < 1e-4
        assert abs(post.fixef["Days"] - fit.fixef["Days"]) < 2 * post.fixef_se["Days"]
        assert abs(boot.fixef.std()["Days"] / fit.fixef_se["Days"] - 1) < 0.25
