"""The runner's papermill engine (prrt.runner.execute.papermill_engine)."""

from __future__ import annotations

import nbformat
import papermill as pm
from papermill import engines

from prrt.runner.execute import papermill_engine


def test_the_engine_writes_the_notebook_when_it_starts_and_ends_not_at_every_cell(tmp_path, monkeypatch):
    """Papermill's own engine writes the executed notebook before and after every cell (22 times for 10 cells); the
    runner's writes it when it starts and when it ends (and every 30 s, papermill's autosave), with every output."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"print({i} * {i})") for i in range(10)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "in.ipynb")
    writes = []
    real = engines.write_ipynb
    monkeypatch.setattr(engines, "write_ipynb", lambda nb, path, **kw: writes.append(path) or real(nb, path, **kw))
    done = pm.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), engine_name=papermill_engine(),
                               progress_bar=False)
    squares = [f"{i * i}\n" for i in range(10)]
    assert [c.outputs[0]["text"] for c in done.cells] == squares
    assert [c.outputs[0]["text"] for c in nbformat.read(tmp_path / "out.ipynb", 4).cells] == squares
    assert writes == [str(tmp_path / "out.ipynb")] * 2
