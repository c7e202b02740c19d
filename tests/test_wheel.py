"""The built wheel alone carries what `dynaseal envoy-config --validate` needs (its template is package data)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_a_fresh_venv_with_the_wheel_renders_and_validates_the_envoy_config(tmp_path: Path) -> None:
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp_path / "dist", REPO, cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("dynaseal-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    # Dependencies come from this interpreter's site-packages (a .pth line: no editable finder of the
    # source tree is activated); Dynaseal's own code only from the wheel.
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", wheel, cwd=tmp_path)
    probe = "import dynaseal, dynaseal_launcher as launcher; print(dynaseal.__file__, launcher.__file__)"
    where = run(python, "-c", probe, cwd=tmp_path)
    assert str(REPO) not in where and str(venv) in where, where
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("DYNASEAL_CONFIG", None)
    out = tmp_path / "envoy.yaml"
    run(venv / "bin" / "dynaseal", "envoy-config", "--validate", "--access-log", tmp_path / "access.log",
        "--out", out, cwd=tmp_path, env=env)
    assert "json_format" in out.read_text() and "dynaseal_authz" in out.read_text()
