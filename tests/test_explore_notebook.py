"""The dataset exploration notebook runs on the embedded dataset and shows its figures."""

from __future__ import annotations

import pytest

from hiresmed_nb.params import project_root

NOTEBOOK = project_root() / "notebooks" / "00_explore_dataset.ipynb"


@pytest.mark.notebook
def test_explore_notebook_counts_classes_and_shows_every_resolution(tmp_path):
    import nbformat
    import papermill

    output = tmp_path / "explore.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(output),
        parameters={"IMAGES_PER_CLASS": 3, "SAMPLES_PER_CLASS": 2, "SIZES": [32, 64, 128]},
        kernel_name="hiresmed",
        cwd=str(project_root()),
        progress_bar=False,
    )
    cells = nbformat.read(output, as_version=4).cells
    outputs = [o for cell in cells if cell.cell_type == "code" for o in cell.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the samples grid and the resolution strip
    counts = [o["data"]["text/plain"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("train" in text and "test" in text for text in counts)
    assert any("SYNTHETIC" in o.get("data", {}).get("text/markdown", "") for o in outputs)
