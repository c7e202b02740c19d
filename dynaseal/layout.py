"""The core's import graph: `python -m dynaseal.layout` prints `part -> parts it imports`, bottom up.

A part is a room (a package directly under `dynaseal/`, generated `pb` and the `defaults` data aside) or a
top-level module of `dynaseal/` (`config`, `tenant_config`, `errors`, ...): a module every room may import is
still a node, so a chain of imports through it (`ledger -> tenant_config -> policy -> ledger`) is a cycle.
Every import counts: at module level, under TYPE_CHECKING, inside functions, relative or absolute,
`from dynaseal import config` as well as `import dynaseal.config`. The parts are printed in layers: a part's
layer is one above the highest part it imports, so a part only ever imports parts printed before it. A cycle
has no layers; it is printed instead, each hop with the import that makes it, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import ast
from collections import deque
from collections.abc import Iterator, Mapping
from itertools import pairwise
from pathlib import Path

CORE = Path(__file__).resolve().parent
NOT_ROOMS = frozenset({"pb", "defaults"})

Graph = dict[str, set[str]]


def rooms(core: Path = CORE) -> list[str]:
    """The core's rooms, sorted: its packages, generated code and data aside."""
    return sorted(p.parent.name for p in core.glob("*/__init__.py") if p.parent.name not in NOT_ROOMS)


def top_modules(core: Path = CORE) -> list[str]:
    """The core's top-level modules, sorted (the package's own `__init__` aside)."""
    return sorted(p.stem for p in core.glob("*.py") if p.stem != "__init__")


def part_files(core: Path = CORE) -> dict[str, list[Path]]:
    """Each part of the core and the source files it is made of."""
    parts = {room: sorted((core / room).rglob("*.py")) for room in rooms(core)}
    parts.update({module: [core / f"{module}.py"] for module in top_modules(core)})
    return parts


def module_name(path: Path, core: Path) -> str:
    """The dotted name a file of the core is imported as (`dynaseal.keys.origins`, `dynaseal.keys`)."""
    parts = [core.name, *path.relative_to(core).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, core: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in a file; `from a import b` yields `a` and `a.b`."""
    name = module_name(path, core)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the file's own package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base:
                yield node.lineno, base
                # `from dynaseal import config` imports the module dynaseal.config (a name that is not a
                # module, `from x import SomeClass`, maps to x's part anyway).
                for alias in node.names:
                    yield node.lineno, f"{base}.{alias.name}"


def imported_modules(path: Path, core: Path = CORE) -> set[str]:
    """Every absolute module name a file imports (relative imports resolved)."""
    return {module for _, module in _imports(path, core)}


def _part_of(module: str, core: Path, parts: Mapping[str, object]) -> str | None:
    """The part of the core a module name belongs to, or None when it is outside the core."""
    names = module.split(".")
    if names[0] != core.name or len(names) < 2 or names[1] not in parts:
        return None
    return names[1]


def import_sites(core: Path = CORE) -> dict[tuple[str, str], list[str]]:
    """For each edge (part, part it imports), where it is imported: `path:line module`, sorted."""
    parts = part_files(core)
    sites: dict[tuple[str, str], dict[str, str]] = {}
    for part, files in parts.items():
        for path in files:
            for line, module in _imports(path, core):
                target = _part_of(module, core, parts)
                if target is not None and target != part:
                    # One site per import statement, named by the module it imports from.
                    where = f"{path.relative_to(core.parent).as_posix()}:{line}"
                    sites.setdefault((part, target), {}).setdefault(where, module)
    return {edge: sorted(f"{where} {module}" for where, module in found.items()) for edge, found in sites.items()}


def import_graph(core: Path = CORE) -> Graph:
    """Which other parts each part of the core imports (rooms and top-level modules alike)."""
    graph: Graph = {part: set() for part in part_files(core)}
    for part, target in import_sites(core):
        graph[part].add(target)
    return graph


def layers(edges: Graph) -> dict[str, int] | None:
    """Each part's layer (0: imports no part), or None when the parts import each other in a cycle."""
    layer: dict[str, int] = {}
    while len(layer) < len(edges):
        ready = [part for part, below in edges.items() if part not in layer and below <= layer.keys()]
        if not ready:  # what is left imports itself through some chain
            return None
        for part in ready:
            layer[part] = 1 + max((layer[below] for below in edges[part]), default=-1)
    return layer


def _way_back(edges: Graph, start: str) -> list[str]:
    """A shortest chain of imports from `start` back to itself (breadth first), or [] when there is none."""
    came_from = {start: start}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(came_from[chain[-1]])
                return [*reversed(chain), start]
            if nxt not in came_from:
                came_from[nxt] = node
                queue.append(nxt)
    return []


def cycle(edges: Graph) -> list[str]:
    """One shortest chain of imports that leads a part back to itself (empty when there is none)."""
    chains = [chain for start in sorted(edges) if (chain := _way_back(edges, start))]
    return min(chains, key=len, default=[])


def render(edges: Graph, sites: Mapping[tuple[str, str], list[str]] | None = None) -> list[str]:
    """`[layer] part -> parts it imports` lines, bottom layer first; a cycle's chain when there is one."""
    layer = layers(edges)
    if layer is None:
        chain = cycle(edges)
        lines = ["cycle: " + " -> ".join(chain)]
        for part, target in pairwise(chain):
            found = (sites or {}).get((part, target), [])
            lines.append(f"  {part} -> {target}: " + (found[0] if found else "?")
                         + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""))
        return lines
    order = sorted(edges, key=lambda part: (layer[part], part))
    return [f"[{layer[part]}] {part} -> {', '.join(sorted(edges[part], key=lambda p: (layer[p], p))) or '(none)'}"
            for part in order]


def main(argv: list[str] | None = None) -> int:
    """Print the core's import graph; exit 1 if it has a cycle."""
    parser = argparse.ArgumentParser(prog="python -m dynaseal.layout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core", type=Path, default=CORE, help="the core package's directory (default: this one)")
    args = parser.parse_args(argv)
    core = args.core.resolve()
    sites = import_sites(core)
    edges = import_graph(core)
    print("\n".join(render(edges, sites)))
    return 0 if layers(edges) is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
