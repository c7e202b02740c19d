"""The core's layout: `dynaseal/` imports no service and not the launcher, starts nothing, and its parts (rooms
and top-level modules) import each other without cycles, checked with `dynaseal.layout`'s own graph."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dynaseal import layout
from dynaseal.layout import imported_modules

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("authz_service", "issuer_api", "admin_api", "log_shipper", "callback_consumer", "mock_llm",
            "dynaseal_launcher", "usage_recorder")
ROOMS = ("keys", "policy", "ledger", "usage", "money", "runtime", "routing", "contracts", "envoy", "usage_store",
         "tenancy", "content")


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


def test_every_core_room_is_a_room_of_the_layout() -> None:
    assert set(layout.rooms()) == set(ROOMS)


def test_the_top_level_modules_are_parts_of_the_graph_too() -> None:
    """`config`, `tenant_config`, `errors`... are nodes: a chain of imports through one of them is seen."""
    graph = layout.import_graph()
    assert {"config", "tenant_config", "upstreams", "errors", "origin_patterns"} <= graph.keys()
    assert set(graph) == set(ROOMS) | set(layout.top_modules())
    assert "tenant_config" in graph["ledger"] and "config" in graph["tenancy"]  # edges the room view missed


def test_the_core_imports_itself_without_cycles() -> None:
    """Each part stands on the ones below it: no chain of imports (module level, TYPE_CHECKING or inside a
    function) leads a room or a top-level module back to itself."""
    graph = layout.import_graph()
    assert layout.layers(graph) is not None, "\n".join(layout.render(graph, layout.import_sites()))


def _reached(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every part `start` imports, directly or through others."""
    seen: set[str] = set()
    pending = [start]
    while pending:
        for below in graph[pending.pop()] - seen:
            seen.add(below)
            pending.append(below)
    return seen


def test_the_config_schema_stands_below_the_rooms_that_read_it() -> None:
    """Every room reads the config, so the config imports none of the rooms that decide, count or deliver:
    what it needs to validate a file (origin patterns, content rules) lives at or below it."""
    deciding = {"keys", "policy", "ledger", "routing", "runtime", "tenancy", "usage", "usage_store", "envoy"}
    graph = layout.import_graph()
    for schema in ("config", "tenant_config", "upstreams", "edge_tls", "local_stack"):
        assert not _reached(graph, schema) & deciding, (schema, sorted(_reached(graph, schema) & deciding))


def test_the_contracts_room_stands_on_no_other_room() -> None:
    """What crosses a process boundary is defined below everything that uses it: contracts import no part."""
    assert layout.import_graph()["contracts"] == set()


def _module_cycles(package: str) -> list[tuple[str, str]]:
    """Pairs of modules of one package that import each other (TYPE_CHECKING and local imports count)."""
    modules = {p.stem: p for p in (REPO / package).glob("*.py")}
    imports = {name: {m.split(".")[1] for m in imported_modules(path, REPO / package)
                      if m.startswith(f"{package}.") and m.split(".")[1] in modules} for name, path in modules.items()}
    return sorted((a, b) for a in imports for b in imports[a] if a < b and a in imports.get(b, set()))


@pytest.mark.parametrize("package", ["callback_consumer", "log_shipper", "issuer_api", "admin_api", "authz_service"])
def test_no_two_modules_of_a_service_call_each_other(package: str) -> None:
    # A module pair importing each other (ThresholdSender and Deliverer were one) hides a missing seam.
    assert not _module_cycles(package), _module_cycles(package)
