"""The core's import graph between its rooms: `python -m dynaseal.layout` prints `room -> rooms it imports`.

A room is a package directly under `dynaseal/` (generated `pb` and the `defaults` data aside). Every import
counts, including those under TYPE_CHECKING and inside functions, as `tests/test_layout.py` counts them. The
rooms are printed bottom up, in layers: a room's layer is one above the highest room it imports, so a room
only ever imports rooms printed before it. A cycle has no layers; it is printed instead, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent
NOT_ROOMS = frozenset({"pb", "defaults"})


def rooms(core: Path = CORE) -> list[str]:
    """The core's rooms, sorted: its packages, generated code and data aside."""
    return sorted(p.parent.name for p in core.glob("*/__init__.py") if p.parent.name not in NOT_ROOMS)


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name a file imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def room_edges(core: Path = CORE) -> dict[str, set[str]]:
    """Which other rooms each room imports."""
    names = rooms(core)
    edges: dict[str, set[str]] = {room: set() for room in names}
    for room in names:
        for path in (core / room).rglob("*.py"):
            for module in imported_modules(path):
                parts = module.split(".")
                if parts[0] == core.name and len(parts) > 1 and parts[1] in edges and parts[1] != room:
                    edges[room].add(parts[1])
    return edges


def layers(edges: dict[str, set[str]]) -> dict[str, int] | None:
    """Each room's layer (0: imports no room), or None when the rooms import each other in a cycle."""
    layer: dict[str, int] = {}
    while len(layer) < len(edges):
        ready = [room for room, below in edges.items() if room not in layer and below <= layer.keys()]
        if not ready:  # what is left imports itself through some chain
            return None
        for room in ready:
            layer[room] = 1 + max((layer[below] for below in edges[room]), default=-1)
    return layer


def cycle(edges: dict[str, set[str]]) -> list[str]:
    """One chain of imports that leads a room back to itself (empty when there is none)."""
    def walk(path: list[str]) -> list[str]:
        for nxt in sorted(edges[path[-1]]):
            if nxt == path[0]:
                return [*path, nxt]
            if nxt not in path and (found := walk([*path, nxt])):
                return found
        return []

    for room in sorted(edges):
        if found := walk([room]):
            return found
    return []


def render(edges: dict[str, set[str]]) -> list[str]:
    """`room -> rooms it imports` lines, bottom layer first; a cycle's chain when there is one."""
    layer = layers(edges)
    if layer is None:
        return ["cycle: " + " -> ".join(cycle(edges))]
    order = sorted(edges, key=lambda room: (layer[room], room))
    return [f"[{layer[room]}] {room} -> {', '.join(sorted(edges[room], key=lambda r: (layer[r], r))) or '(none)'}"
            for room in order]


def main(argv: list[str] | None = None) -> int:
    """Print the core's room graph; exit 1 if it has a cycle."""
    parser = argparse.ArgumentParser(prog="python -m dynaseal.layout", description=__doc__)
    parser.add_argument("--core", type=Path, default=CORE, help="the core package's directory (default: this one)")
    args = parser.parse_args(argv)
    edges = room_edges(args.core)
    print("\n".join(render(edges)))
    return 0 if layers(edges) is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
