"""The slow tier's soak: the whole local stack at its sustained rate, bounded, then every callback stored.

`pytest -m soak tests/test_pipeline_soak.py` (not in the default run). Runs `python -m bench
pipeline-soak` for 30 s (wrk, 8 connections; the request count is what the gateway serves in that
time) and a drain of at most 4 minutes: every served request stored by the bundled issuer, nothing
in the DLQ (no `overloaded` while the receiver answers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.soak]


def test_the_stack_at_its_sustained_rate_stores_every_callback_and_dead_letters_none() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "pipeline-soak", "--seconds", "30", "--drain-max-s", "240"],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("SOAK ")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    figures = json.loads(line.removeprefix("SOAK "))
    print(figures)
    assert figures["served"] > 1000
    assert figures["stored_after_drain"] >= figures["served"]
    assert figures["dlq_by_reason"] == {}
    assert proc.returncode == 0
