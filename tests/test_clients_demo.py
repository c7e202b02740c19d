"""The demo edge client (`dynaseal demo`) runs its whole flow against the real stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynaseal.config import DynasealConfig
from dynaseal_launcher.edge_demo import run_demo

pytestmark = pytest.mark.integration


def test_demo_flow_succeeds_with_the_seed_clients_call(cfg: DynasealConfig, stack: object,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(cfg, Path(cfg.gateway.data_dir) / "envoy" / "access.log", expect_callback=True) == 0
    out = capsys.readouterr().out
    assert "x-dynaseal-request-id" in out and "callback stored by the backend" in out
