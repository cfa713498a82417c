"""The shape of the code, kept: which part may import which.

Each package's docstring says what it owns; this says what it may use, by reading every
module's imports (`from .x`, `from gateway.x`, `import gateway.x`). A new import that crosses a
line fails here, where the fix is still cheap, and so does a new part without a rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[1] / "gateway"

# Each part of the gateway (a package, or a top-level module) and the parts it may import;
# a part without an entry fails. The leaves know nothing of the gateway; the request path
# (route, pipeline) stands on checks, dedup and forwarding and never touches the store; the
# storage package is handed its routes (`forwarding.queued`) and never reaches back; the
# runtime holds both, and the history beside the store; the pages read the runtime and never
# run a request; serving and the commands are on top.
# sessions: reward sessions' checks (Telegram's initData, the signed ymid), values in and out
LEAVES = "__init__ errors postback deadline shown record hotmetrics demo_app sessions"
RULES = {
    "access_log": "record",
    "logs": "access_log",
    "journal": "errors record",
    "metrics": "__init__ errors hotmetrics record",
    "checks": "errors postback shown",
    # not tls: reading a config never loads certificates (only check, run and a reload do)
    # sessions: an origin in allowed_origins is read as browsers send it (parse_origin)
    "config": "checks errors postback sessions shown",
    "tls": "config shown",
    "dedup": "errors metrics postback",
    "forwarding": "config errors metrics postback record",
    # a route's reward sessions, compiled: the ymid check on its postbacks, and issuing
    "reward_sessions": "config errors postback record sessions",
    "route": "checks config dedup errors forwarding postback record reward_sessions",
    "verdicts": "config record",
    "pipeline": "checks config deadline dedup errors forwarding metrics postback record "
    "reward_sessions route",
    "durable": "config deadline dedup errors forwarding metrics postback record shown",
    # the record of every postback: beside the store (its file or database), never the path
    # where postbacks with a valid key came from; the advice allowlist.py makes of it
    "senders": "checks metrics record",
    "history": "config deadline durable errors metrics postback record reward_sessions senders",
    # a ymid's status, read from the history, and the watch that holds `?wait=` requests
    "ymid_status": "durable errors history",
    "runtime": "config deadline dedup durable forwarding history journal logs metrics pipeline "
    "record reward_sessions senders ymid_status",
    "reload": "config runtime tls",
    "inspector": "allowlist config durable errors history journal record route runtime verdicts",
    "serving": "access_log checks config deadline durable errors inspector logs metrics pipeline "
    "record reload reward_sessions runtime sessions tls ymid_status",
    "summary": "config postback",
    "fire": "checks config dedup errors postback record reward_sessions route verdicts",
    "queue_cli": "config durable shown",
    "history_cli": "config durable history shown",
    "allowlist": "checks config senders",
    "allowlist_cli": "allowlist config history history_cli shown",
    # a first config from the URL registered with Monetag, and the command that writes it
    "init_config": "config postback shown",
    "init_cli": "config init_config",
    "cli": "allowlist_cli config durable fire history_cli init_cli queue_cli serving summary tls",
    "__main__": "cli",
}
MAY_IMPORT = {
    **{leaf: set[str]() for leaf in LEAVES.split()},
    **{part: set(allowed.split()) for part, allowed in RULES.items()},
}


def imports_of(module: Path, text: str | None = None) -> set[str]:
    """The gateway parts (first name under gateway/, `.py` dropped) a module imports, by
    `from . import`, `from gateway.x import` or plain `import gateway.x`."""
    package = module.relative_to(GATEWAY).parts[:-1]
    found: set[str] = set()
    source = module.read_text(encoding="utf-8") if text is None else text
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - (node.level - 1)])
            target = [*base, *(node.module.split(".") if node.module else [])]
            names = [target] if node.module else [[*base, alias.name] for alias in node.names]
            found.update(parts[0] if parts else "__init__" for parts in names)
        elif isinstance(node, ast.ImportFrom) and node.module == "gateway":
            found.update(alias.name for alias in node.names)
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gateway.")
        ):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gateway."):
                    found.add(alias.name.split(".")[1])
    found = {name.removesuffix(".py") for name in found}
    return {"__init__" if name == "__version__" else name for name in found}


def part_of(module: Path) -> str:
    first = module.relative_to(GATEWAY).parts[0]
    return first.removesuffix(".py")


MODULES = sorted(GATEWAY.rglob("*.py"))


@pytest.mark.parametrize("module", MODULES, ids=lambda module: str(module.relative_to(GATEWAY)))
def test_each_module_imports_only_what_its_part_may(module: Path) -> None:
    own = part_of(module)
    assert own in MAY_IMPORT, f"{own} has no rule in MAY_IMPORT: say what it may import"
    crossing = imports_of(module) - MAY_IMPORT[own] - {own}
    assert not crossing, f"{module.relative_to(GATEWAY)} imports {sorted(crossing)}"


def test_the_rules_are_about_parts_that_exist() -> None:
    parts = {part_of(module) for module in MODULES}
    named = set(MAY_IMPORT) | {part for allowed in MAY_IMPORT.values() for part in allowed}
    assert named <= parts, named - parts


def test_a_plain_import_counts_too() -> None:
    text = "import gateway.durable.service\nfrom gateway import runtime\nfrom .. import route\n"
    assert imports_of(GATEWAY / "checks" / "example.py", text) == {"durable", "runtime", "route"}


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


# -- inside history/: the same two stores, the statements written once ---------------------------

HISTORY = GATEWAY / "history"
HISTORY_STORES = {"postgres_history": {"asyncpg"}, "sqlite_history": {"sqlite3"}}


@pytest.mark.parametrize("module", sorted(HISTORY.glob("*.py")), ids=lambda module: module.stem)
def test_each_history_module_knows_at_most_its_own_store(module: Path) -> None:
    """The rows, the statements (sql.py), the sessions and what is asked know neither store;
    each store knows its own library, never the other store; `store.py` opens either."""
    imported = durable_imports_of(module)
    every_store = set(HISTORY_STORES) | {
        name for names in HISTORY_STORES.values() for name in names
    }
    if module.stem in HISTORY_STORES:
        other = every_store - HISTORY_STORES[module.stem] - {module.stem}
        assert not imported & other, imported
    elif module.stem != "store":
        assert not imported & every_store, f"{module.name} should use the HistoryStore protocol"
