"""`python -m dynaseal.layout`: the core's import graph (rooms and top-level modules), layered, and a cycle
reported, with the imports that make it, when there is one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dynaseal import layout

REPO = Path(__file__).resolve().parent.parent


def make_core(root: Path, files: dict[str, str]) -> Path:
    """A fake core package `fakecore` under `root`: {"room/mod.py" or "module.py": source}; packages get an
    __init__."""
    core = root / "fakecore"
    core.mkdir(parents=True, exist_ok=True)
    (core / "__init__.py").touch()
    for name, source in files.items():
        path = core / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not (path.parent / "__init__.py").exists():
            (path.parent / "__init__.py").touch()
        path.write_text(source)
    return core


def test_the_real_core_prints_one_layered_line_per_part(capsys: pytest.CaptureFixture[str]) -> None:
    assert layout.main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    printed = [line.split("] ", 1)[1].split(" -> ")[0] for line in lines]
    assert sorted(printed) == sorted([*layout.rooms(), *layout.top_modules()])
    assert "pb" not in printed and "defaults" not in printed and "__init__" not in printed
    assert {"config", "tenant_config", "upstreams", "errors"} <= set(printed)
    assert "[0] contracts -> (none)" in lines
    seen: set[str] = set()
    for line in lines:  # bottom up: a part imports only parts printed above it
        part, below = line.split("] ", 1)[1].split(" -> ")
        assert below == "(none)" or set(below.split(", ")) <= seen, line
        seen.add(part)


def test_every_kind_of_import_counts(tmp_path: Path) -> None:
    core = make_core(tmp_path, {
        "a/top.py": "import fakecore.b.x\n",
        "b/x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fakecore.c import y\n",
        "c/y.py": "def late() -> None:\n    from fakecore.d.z import thing\n",
        "d/z.py": "from . import sibling\nimport os\nthing = 1\n",  # within its own room, or foreign: no edge
        "d/sibling.py": "from ..settings import VALUE\n",  # relative, up into a top-level module
        "settings.py": "def load() -> None:\n    from fakecore import base\n",  # `from core import module`
        "base.py": "import json\n",
        "pb/gen.py": "import fakecore.a\n",
    })
    graph = layout.import_graph(core)
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"d"}, "d": {"settings"}, "settings": {"base"}, "base": set()}
    assert layout.render(graph) == ["[0] base -> (none)", "[1] settings -> base", "[2] d -> settings",
                                    "[3] c -> d", "[4] b -> c", "[5] a -> b"]


def test_a_cycle_through_a_top_level_module_inside_a_function_is_printed_and_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The shape the room-only graph could not see: ledger -> tenant_config -> policy -> ledger, the middle
    hop a top-level module importing a room inside a function."""
    core = make_core(tmp_path, {
        "ledger/quota.py": "from fakecore.tenant_config import Limits\n",
        "tenant_config.py": "class Limits:\n    def check(self) -> None:\n"
                            "        from fakecore.policy.rules import compile_rules\n",
        "policy/rules.py": "from fakecore.ledger import quota\ncompile_rules = None\n",
        "usage/events.py": "import fakecore.ledger.quota\n",  # above the cycle, not in it
    })
    assert layout.layers(layout.import_graph(core)) is None
    assert layout.cycle(layout.import_graph(core)) == ["ledger", "tenant_config", "policy", "ledger"]
    assert layout.main(["--core", str(core)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "cycle: ledger -> tenant_config -> policy -> ledger",
        "  ledger -> tenant_config: fakecore/ledger/quota.py:1 fakecore.tenant_config",
        "  tenant_config -> policy: fakecore/tenant_config.py:3 fakecore.policy.rules",
        "  policy -> ledger: fakecore/policy/rules.py:1 fakecore.ledger",
    ]


def test_the_shortest_cycle_is_the_one_printed() -> None:
    graph = {"a": {"b"}, "b": {"c", "a"}, "c": {"a"}, "d": {"a"}}
    assert layout.cycle(graph) == ["a", "b", "a"]
    assert layout.cycle({"a": {"b"}, "b": set()}) == []


def test_the_command_runs_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-m", "dynaseal.layout"], cwd=REPO, capture_output=True, text=True,
                          check=False, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "envoy -> " in done.stdout and "] tenant_config -> " in done.stdout
