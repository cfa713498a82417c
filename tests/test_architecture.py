"""The shape of the code, kept: which package may import which.

Each package's docstring says what it owns; this says what it must not touch, by reading every
module's imports. A new import that crosses a line fails here, where the fix is still cheap.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[1] / "gateway"

# package -> the parts of the gateway it must never import
FORBIDDEN = {
    "checks": {"dedup", "durable", "forwarding", "serving", "pipeline", "route", "runtime",
               "inspector"},
    # tls: reading a config never loads certificates (only check, run and a reload do)
    "config": {"dedup", "durable", "forwarding", "serving", "pipeline", "route", "runtime",
               "inspector", "tls"},
    "dedup": {"durable", "forwarding", "serving", "pipeline", "route", "runtime", "config",
              "inspector"},
    "forwarding": {"dedup", "durable", "serving", "pipeline", "route", "runtime", "inspector"},
    "durable": {"serving", "pipeline", "runtime", "inspector"},
    "pipeline": {"durable", "serving", "runtime", "inspector"},
    "route": {"durable", "serving", "pipeline", "runtime", "inspector"},
    "runtime": {"serving"},
    # the pages read the runtime; they never run a request or touch the sockets
    "inspector": {"serving", "pipeline", "forwarding", "checks", "dedup"},
}  # fmt: skip


def imports_of(module: Path) -> set[str]:
    """The gateway parts (first name under gateway/) a module imports."""
    package = module.relative_to(GATEWAY).parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - (node.level - 1)])
            target = [*base, *(node.module.split(".") if node.module else [])]
            names = [target] if node.module else [[*base, alias.name] for alias in node.names]
            found.update(parts[0] for parts in names if parts)
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gateway.")
        ):
            found.add(node.module.split(".")[1])
    return found


def part_of(module: Path) -> str:
    first = module.relative_to(GATEWAY).parts[0]
    return first.removesuffix(".py")


@pytest.mark.parametrize(
    "module",
    sorted(GATEWAY.rglob("*.py")),
    ids=lambda module: str(module.relative_to(GATEWAY)),
)
def test_no_module_imports_what_its_package_must_not_touch(module: Path) -> None:
    own = part_of(module)
    crossing = imports_of(module) & FORBIDDEN.get(own, set())
    assert not crossing, f"{module.relative_to(GATEWAY)} imports {sorted(crossing)}"


def test_the_rules_are_about_parts_that_exist() -> None:
    parts = {part_of(module) for module in GATEWAY.rglob("*.py")}
    named = set(FORBIDDEN) | {part for forbidden in FORBIDDEN.values() for part in forbidden}
    assert named <= parts, named - parts


# -- inside durable/: the two stores behind one protocol ------------------------------------------

DURABLE = GATEWAY / "durable"
POSTGRES_MODULES = {"postgres_outbox", "postgres_keys"}
SQLITE_MODULES = {"sqlite_outbox", "sqlite_writer", "keys"}


def durable_imports_of(module: Path) -> set[str]:
    """The modules of durable/ (sibling names) and the libraries a durable module imports."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found


@pytest.mark.parametrize("module", sorted(DURABLE.glob("*.py")), ids=lambda module: module.stem)
def test_each_store_knows_only_the_outbox_protocol_not_the_other_store(module: Path) -> None:
    """SQLite and PostgreSQL share `outbox.py` (the vocabulary and the protocol); only
    `service.py` (which opens the configured one) and the package know both."""
    imported = durable_imports_of(module)
    if module.stem in POSTGRES_MODULES:
        assert not imported & (SQLITE_MODULES | {"sqlite3"}), imported
    elif module.stem in SQLITE_MODULES:
        assert not imported & (POSTGRES_MODULES | {"asyncpg"}), imported
    elif module.stem not in {"service", "__init__"}:
        stores = POSTGRES_MODULES | SQLITE_MODULES | {"asyncpg", "sqlite3"}
        assert not imported & stores, f"{module.name} should use the Outbox protocol"
