"""`python -m dynaseal.layout`: the core's room graph, layered, and a cycle reported when there is one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dynaseal import layout

REPO = Path(__file__).resolve().parent.parent


def make_core(root: Path, files: dict[str, str]) -> Path:
    """A fake core package `fakecore` under `root`: {"room/mod.py": source}; every room gets an __init__."""
    core = root / "fakecore"
    for name, source in files.items():
        path = core / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(source)
    return core


def test_the_real_core_prints_one_layered_line_per_room(capsys: pytest.CaptureFixture[str]) -> None:
    assert layout.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    printed = [line.split("] ", 1)[1].split(" -> ")[0] for line in lines]
    assert sorted(printed) == layout.rooms() and "pb" not in printed and "defaults" not in printed
    assert "[0] contracts -> (none)" in lines
    seen: set[str] = set()
    for line in lines:  # bottom up: a room imports only rooms printed above it
        room, below = line.split("] ", 1)[1].split(" -> ")
        assert below == "(none)" or set(below.split(", ")) <= seen, line
        seen.add(room)


def test_every_kind_of_import_counts(tmp_path: Path) -> None:
    core = make_core(tmp_path, {
        "a/top.py": "import fakecore.b.x\n",
        "b/x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fakecore.c import y\n",
        "c/y.py": "def late() -> None:\n    from fakecore.d.z import thing\n",
        "d/z.py": "from . import sibling\nimport os\nthing = 1\n",  # relative and foreign imports are not edges
        "pb/gen.py": "import fakecore.a\n",
    })
    assert layout.room_edges(core) == {"a": {"b"}, "b": {"c"}, "c": {"d"}, "d": set()}
    assert layout.render(layout.room_edges(core)) == ["[0] d -> (none)", "[1] c -> d", "[2] b -> c", "[3] a -> b"]


def test_a_cycle_is_printed_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    core = make_core(tmp_path, {"a/m.py": "from fakecore.b import n\n", "b/n.py": "import fakecore.c.o\n",
                                "c/o.py": "from fakecore.a.m import x\n", "d/p.py": "import fakecore.a\n"})
    assert layout.layers(layout.room_edges(core)) is None
    assert layout.main(["--core", str(core)]) == 1
    assert capsys.readouterr().out.strip() == "cycle: a -> b -> c -> a"


def test_the_command_runs_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-m", "dynaseal.layout"], cwd=REPO, capture_output=True, text=True,
                          check=False, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "envoy -> " in done.stdout
