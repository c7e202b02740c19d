"""`bench.pipeline_bench --before REV`: REV's processes really run REV's code, and the table compares within rounds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.pipeline_ab import Side, table
from bench.pipeline_bench import REPO, RUN_FROM_TREE, PipelineRig


def test_a_service_started_from_another_tree_runs_that_trees_code(tmp_path: Path) -> None:
    # This tree has a callback_consumer package too, and the working directory is this tree: `python -m`
    # would run this tree's package whatever PYTHONPATH said.
    package = tmp_path / "callback_consumer"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("import sys\nprint(__file__, sys.argv[1:])\n")
    done = subprocess.run([sys.executable, "-c", RUN_FROM_TREE, str(tmp_path), "callback_consumer", "--config", "x"],
                          cwd=REPO, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{package / '__main__.py'} ['--config', 'x']"


def test_the_table_compares_each_round_within_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BENCH_TENANT_SECRET", "BENCH_WEBHOOK_SECRET"):
        monkeypatch.setenv(name, "")
    before = Side("before", PipelineRig(tmp_path), rates=[1000, 2000, 1000], consumer_us=[400, 200, 400],
                  shipper_us=[100, 100, 100])
    after = Side("after", PipelineRig(tmp_path), rates=[1100, 1000, 1500], consumer_us=[360, 300, 300],
                 shipper_us=[90, 120, 100])
    lines = table(before, after)
    assert lines[2] == "| 1 | 1,000 | 1,100 | 1.10 | 400 | 360 | 0.90 | 100 | 90 |"
    assert lines[3] == "| 2 | 2,000 | 1,000 | 0.50 | 200 | 300 | 1.50 | 100 | 120 |"
    assert lines[-1] == ("Median ratio after / before: events/s 1.10, consumer CPU per event 0.90, "
                         "shipper CPU per event 1.00.")
