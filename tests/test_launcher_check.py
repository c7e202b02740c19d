"""`dynaseal check` names every problem; `--config` in any position; a failed start shows this run's log."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dynaseal.config import bundled_dev_config
from dynaseal_launcher.cli import build_parser, main
from dynaseal_launcher.processes import ServiceSpec, StartupError, Supervisor


def write_config(tmp_path: Path, tenant_changes: dict[str, Any]) -> Path:
    """The bundled dev config in tmp_path with its demo tenant changed."""
    raw = yaml.safe_load(bundled_dev_config().read_text())
    raw["env_file"] = str(bundled_dev_config().parent / "dev.env")
    raw["gateway"]["data_dir"] = str(tmp_path / "data")
    raw["tenants"][0].pop("jwks_file")
    raw["tenants"][0].update(tenant_changes)
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_check_passes_a_good_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(write_config(tmp_path, {}))]) == 0
    assert "configuration OK" in capsys.readouterr().out


def test_check_names_a_malformed_callback_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, {"callback": {"url": "htp:/127.0.0.1:9000/v1/callback/usage",
                                                "secret_env": "DYNASEAL_DEMO_WEBHOOK_SECRET"}})
    assert main(["check", "--config", str(path)]) == 1
    assert "callback url 'htp:/127.0.0.1:9000/v1/callback/usage'" in capsys.readouterr().out


def test_check_names_every_missing_secret_and_unreadable_file_for_each_service(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, {
        "keys": [{"alg": "HS256", "secret_env": "DYNASEAL_CHECK_UNSET_SEED"}],
        "callback": {"url": "http://127.0.0.1:9000/cb", "secret_file": str(tmp_path / "absent-webhook-secret")}})
    assert main(["--config", str(path), "check"]) == 1
    out = capsys.readouterr().out
    assert "authz: tenant 671249a93f1cf2f8bf9b2b82 key (seed): environment variable DYNASEAL_CHECK_UNSET_SEED" in out
    for service in ("consumer", "issuer"):  # authz never reads a callback secret
        assert f"{service}: tenant 671249a93f1cf2f8bf9b2b82 callback: secret file" in out, service
    assert "authz: tenant 671249a93f1cf2f8bf9b2b82 callback" not in out
    assert "absent-webhook-secret cannot be read" in out


@pytest.mark.parametrize("argv", [["--config", "x.yaml", "up"], ["up", "--config", "x.yaml"],
                                  ["demo", "--config", "x.yaml", "--keep-running"], ["check", "--config", "x.yaml"]])
def test_config_is_accepted_before_and_after_the_subcommand(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).config == "x.yaml"


def test_no_config_means_the_default(tmp_path: Path) -> None:
    assert build_parser().parse_args(["up"]).config is None


def test_a_failed_start_shows_only_this_runs_log_lines(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "broken.log").write_text("a line of an earlier run\n")
    spec = ServiceSpec("broken", [sys.executable, "-c", "print('this run failed', flush=True); raise SystemExit(3)"],
                       "nowhere", lambda: False)
    supervisor = Supervisor(logs, "127.0.0.1")
    with pytest.raises(StartupError) as failure:
        supervisor.start(spec)
    supervisor.stop()
    assert "this run failed" in str(failure.value)
    assert "earlier run" not in str(failure.value)
