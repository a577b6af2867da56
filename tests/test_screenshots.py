"""`make screenshots`: real runs on a fresh tracking server, captured by headless Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mlflow_project_store.ready_for_mlflow import screenshots
from tests.helpers.components import require_chromium

VIEWS = {
    "experiment-runs",
    "run-overview",
    "run-metrics",
    "run-artifacts",
    "compare-runs",
    "registered-model",
}


@pytest.mark.server
@pytest.mark.slow
def test_capture_shows_the_runs_their_metric_and_the_champion(tmp_path: Path) -> None:
    require_chromium()
    out = tmp_path / "images"
    texts = screenshots.screenshots(out, screenshots.QUICK)

    assert set(texts) == VIEWS
    for params in screenshots.QUICK.mnist:
        name = screenshots.run_name("mnist", params)
        assert name in texts["experiment-runs"], texts["experiment-runs"][:2000]
        assert name in texts["compare-runs"], texts["compare-runs"][:2000]
    for view in ("experiment-runs", "run-overview", "run-metrics", "compare-runs"):
        assert "val_accuracy" in texts[view], (view, texts[view][:2000])
    assert "learning_rate" in texts["experiment-runs"]
    assert "MLmodel" in texts["run-artifacts"]
    assert "champion" in texts["registered-model"], texts["registered-model"][:2000]
    assert sorted(path.stem for path in out.glob("*.png")) == sorted(VIEWS)
    for view in VIEWS:
        with Image.open(out / f"{view}.png") as image:
            assert image.format == "PNG"
            assert image.size == (screenshots.VIEWPORT["width"], screenshots.VIEWPORT["height"])
            low, high = image.convert("L").getextrema()
            assert high - low > 100, f"{view}.png is blank"


def test_output_that_is_a_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        screenshots.main([str(taken)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, expected a folder" in err, err
    assert str(taken) in err
