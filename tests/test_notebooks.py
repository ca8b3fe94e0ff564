"""Every notebook in notebooks/ runs top to bottom and is linked from README.md.

Each notebook is run by nbclient in a fresh `python3` kernel of this interpreter (ipykernel's
native kernel resolves to `sys.executable`, i.e. the project's virtual environment). The run
fails on the first cell that raises, and the notebooks contain their own assertions about what
they show (shapes, loss decrease, parity error < 1e-4). Files go to a temporary directory
(`DIFFUSETS_NOTEBOOK_OUT`). The kernels share one JAX compilation cache (`JAX_COMPILATION_CACHE_DIR`),
so notebooks that compile the same sampler reuse its XLA program. No API key reaches them: the
optional language-model step of notebook 05 stays off.

All five notebooks took 7 minutes on a 2-core CPU that other jobs were also using (load average about
3); most of that time is compilation.
"""

import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = [
    "01_quickstart.ipynb",
    "02_train_on_ptbxl.ipynb",
    "03_evaluate.ipynb",
    "04_compare_with_pytorch.ipynb",
    "05_rare_conditions.ipynb",
]
CELL_TIMEOUT_S = 600
SECRETS = ("OPENAI_API_KEY", "DIFFUSETS_LLM")  # notebook 05 calls a language model only with both set


def test_the_notebooks_are_all_there():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_linked_from_readme(path):
    readme = (ROOT / "README.md").read_text()
    assert f"](notebooks/{path.name})" in readme, f"README.md has no link to notebooks/{path.name}"
    assert f"]({path.name})" in (NOTEBOOK_DIR / "README.md").read_text(), f"notebooks/README.md lists no {path.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean(path):
    """No outputs in the repository: diffs stay readable and nothing stale is shown."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: a cell holds outputs"


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax-compilation-cache")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch, compilation_cache):
    monkeypatch.setenv("DIFFUSETS_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(compilation_cache))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in SECRETS:
        monkeypatch.delenv(name, raising=False)
    nb = nbformat.read(path, as_version=4)
    # One extra cell proves the kernel is this interpreter, not some other registered python3.
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError (with the cell and its traceback) on any error
    print(f"{path.name}: {time.perf_counter() - start:.0f} s")
    kernel_python = "".join(o.get("text", "") for o in nb.cells[-1].outputs).strip()
    assert Path(kernel_python).resolve() == Path(sys.executable).resolve()
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert not errors
