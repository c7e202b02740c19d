"""The core's rooms: `dynaseal/` imports no service and not the launcher, and starts nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("authz_service", "issuer_api", "admin_api", "log_shipper", "callback_consumer", "mock_llm",
            "dynaseal_launcher", "usage_recorder")
ROOMS = ("keys", "policy", "ledger", "usage", "money", "runtime", "routing", "contracts", "envoy", "usage_store",
         "tenancy")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((REPO / "dynaseal").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_the_core_imports_no_service_and_no_launcher(path: Path) -> None:
    reached = {name for name in imported_modules(path) if name.split(".")[0] in SERVICES}
    assert not reached, f"{path.relative_to(REPO)} imports {sorted(reached)}"
    # Nor does it start processes: that is the launcher's job.
    assert "subprocess" not in imported_modules(path), path


def test_every_room_says_what_it_holds() -> None:
    for room in ROOMS:
        init = REPO / "dynaseal" / room / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()) == 1, f"{room}: a one-line docstring at the top"


def room_edges() -> dict[str, set[str]]:
    """Which rooms each room imports (TYPE_CHECKING and function-local imports count too)."""
    edges: dict[str, set[str]] = {room: set() for room in ROOMS}
    for room in ROOMS:
        for path in (REPO / "dynaseal" / room).rglob("*.py"):
            for name in imported_modules(path):
                parts = name.split(".")
                if parts[0] == "dynaseal" and len(parts) > 1 and parts[1] in ROOMS and parts[1] != room:
                    edges[room].add(parts[1])
    return edges


def test_every_core_room_is_a_room_of_the_layout() -> None:
    rooms = {p.parent.name for p in (REPO / "dynaseal").glob("*/__init__.py")} - {"pb", "defaults"}
    assert rooms == set(ROOMS)


def test_the_rooms_import_each_other_without_cycles() -> None:
    """Each room stands on the ones below it: no chain of imports leads a room back to itself."""
    edges = room_edges()

    def reaches(start: str, node: str, seen: set[str]) -> list[str] | None:
        for nxt in sorted(edges[node]):
            if nxt == start:
                return [node, nxt]
            if nxt not in seen:
                seen.add(nxt)
                if (path := reaches(start, nxt, seen)) is not None:
                    return [node, *path]
        return None

    cycles = [" -> ".join([room, *path[1:]]) for room in ROOMS if (path := reaches(room, room, set()))]
    assert not cycles, cycles


def test_the_contracts_room_stands_on_no_other_room() -> None:
    """What crosses a process boundary is defined below everything that uses it: contracts import no room."""
    assert room_edges()["contracts"] == set()


def _module_cycles(package: str) -> list[tuple[str, str]]:
    """Pairs of modules of one package that import each other (TYPE_CHECKING and local imports count)."""
    modules = {p.stem: p for p in (REPO / package).glob("*.py")}
    imports = {name: {m.split(".")[1] for m in imported_modules(path)
                      if m.startswith(f"{package}.") and m.split(".")[1] in modules} for name, path in modules.items()}
    return sorted((a, b) for a in imports for b in imports[a] if a < b and a in imports.get(b, set()))


@pytest.mark.parametrize("package", ["callback_consumer", "log_shipper", "issuer_api", "admin_api", "authz_service"])
def test_no_two_modules_of_a_service_call_each_other(package: str) -> None:
    # A module pair importing each other (ThresholdSender and Deliverer were one) hides a missing seam.
    assert not _module_cycles(package), _module_cycles(package)
