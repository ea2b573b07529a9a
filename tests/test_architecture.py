"""Architecture rules checked on the source: every state.db table has one owner module (the only
code with SQL naming it), and the modules of appliance/ and drivers/ import each other without
circles. Both read the code with `ast`, so they fail on the commit that breaks the rule.

(`appliance.db.connect` imports the schema owners by name, with importlib, on first use: that
one deliberate dependency on modules that import `db` is not an import statement, so the circle
check does not see it.)"""

from __future__ import annotations

import ast
import re
import sqlite3
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("appliance", "drivers")           # checked for import circles
SQL_PACKAGES = (*PACKAGES, "webui")           # checked for SQL outside a table's owner

# table -> the one module that owns it (writes it, and is the only code with SQL naming it)
OWNERS = {
    "patients": "appliance/index.py",
    "studies": "appliance/index.py",
    "series": "appliance/index.py",
    "instances": "appliance/index.py",
    "associations": "appliance/index.py",
    "association_instances": "appliance/index.py",
    "jobs": "appliance/burn/jobs.py",
    "job_items": "appliance/burn/jobs.py",
    "job_seq": "appliance/burn/jobs.py",
    "burn_cursor": "appliance/burn/routing.py",
    "burn_assocs": "appliance/burn/routing.py",
    "burn_groups": "appliance/burn/routing.py",
    "burn_group_items": "appliance/burn/routing.py",
    "burn_claims": "appliance/burn/routing.py",
    "robot_status": "appliance/burn/robots.py",
    "worklist_items": "appliance/worklist/items.py",
    "worklist_meta": "appliance/worklist/items.py",
    "hl7_outbox": "appliance/hl7/outbox.py",
    "users": "appliance/accounts.py",
    "sessions": "appliance/accounts.py",
    "audit": "appliance/audit.py",
    "transfers": "appliance/transfer/jobs.py",
    "transfer_items": "appliance/transfer/jobs.py",
    "transfer_seq": "appliance/transfer/jobs.py",
    "transfer_requests": "appliance/transfer/jobs.py",
    "forward_items": "appliance/transfer/jobs.py",
    "forward_cursor": "appliance/transfer/jobs.py",
    "tokens": "appliance/portal/tokens.py",
    "token_uses": "appliance/portal/tokens.py",
}

# Read-only SQL outside the owner, each left for a named reason (a write is never allowed here).
# Shrink this list; never grow it without a reason the lead agreed to.
READ_EXCEPTIONS: dict[tuple[str, str], str] = {}

SQL_WORD = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|PRAGMA|FROM|JOIN)\b")
WRITE_WORD = re.compile(r"\b(INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|REPLACE)\b")


def sources(root: Path) -> list[Path]:
    return sorted(p for pkg in SQL_PACKAGES for p in (root / pkg).rglob("*.py"))


def rel(path: Path, root: Path = ROOT) -> str:
    return path.relative_to(root).as_posix()


def sql_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string literal (f-strings with their holes as `?`) that reads like SQL."""
    out = []
    parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    for node in ast.walk(tree):
        if id(node) in parts:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "?" for v in node.values)
        else:
            continue
        if SQL_WORD.search(text):
            out.append((node.lineno, text))
    return out


TABLE_AT = re.compile(r"(?:\bFROM|\bJOIN|\bINTO|\bUPDATE|table_info\(|\bTABLE\b(?: IF NOT EXISTS)?|\bEXISTS|^)\s*(\w+)",
                      re.IGNORECASE)


def tables_named(text: str) -> set[str]:
    """The tables a SQL text names where a table goes (FROM, JOIN, INTO, UPDATE, TABLE, or a FROM
    clause kept as its own string): a column that shares a table's name is not one."""
    return {m for m in TABLE_AT.findall(text.strip()) if m in OWNERS}


def test_the_owner_map_is_the_schema_list():
    """Each table in OWNERS is created by the SCHEMA of its owner, listed in db.SCHEMA_OWNERS, and no
    owner creates a table missing from OWNERS."""
    import importlib

    from appliance import db

    created: dict[str, str] = {}
    for name in db.SCHEMA_OWNERS:
        module = importlib.import_module(name)
        path = rel(Path(module.__file__))
        for table in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", module.SCHEMA):
            assert table not in created, f"{table} created by {created[table]} and {path}"
            created[table] = path
    assert created == OWNERS


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for path in sources(root):
        name = rel(path, root)
        for line, text in sql_strings(ast.parse(path.read_text(), name)):
            for table in tables_named(text):
                if OWNERS[table] == name:
                    continue
                if (name, table) in READ_EXCEPTIONS and not WRITE_WORD.search(text):
                    continue
                found.append(f"{name}:{line}: SQL on {table} (owner {OWNERS[table]}): {text.strip()[:90]!r}")
    return found


def test_sql_naming_a_table_appears_only_in_its_owner():
    assert violations() == []


def test_the_ownership_scan_catches_sql_outside_the_owner(tmp_path, monkeypatch):
    """The scan itself: a module reading `jobs` or writing `robot_status` is reported."""
    pkg = tmp_path / "appliance"
    pkg.mkdir()
    (pkg / "rogue.py").write_text(
        'def f(conn):\n'
        '    conn.execute("SELECT * FROM jobs WHERE state=?", ("queued",))\n'
        '    conn.execute(f"UPDATE robot_status SET online=0 WHERE name={1}")\n')
    (tmp_path / "drivers").mkdir()
    found = violations(tmp_path)
    assert len(found) == 2 and "SQL on jobs" in found[0] and "SQL on robot_status" in found[1], found
    # a read exception allows reads only: the same module writing that table is reported
    (pkg / "rogue.py").unlink()
    (pkg / "dicom").mkdir()
    (pkg / "dicom" / "query.py").write_text(
        'A = "SELECT * FROM studies st JOIN patients p ON p.patient_id=st.patient_id"\n'
        'B = "UPDATE studies SET description=? WHERE study_uid=?"\n')
    assert len(violations(tmp_path)) == 3  # without an exception, the reads too
    for table in ("studies", "patients"):
        monkeypatch.setitem(READ_EXCEPTIONS, ("appliance/dicom/query.py", table), "an example reason")
    found = violations(tmp_path)
    assert len(found) == 1 and "query.py:2: SQL on studies" in found[0], found


def test_an_old_state_db_is_migrated(tmp_path):
    """A state.db from before `patients.id_value` (and before the burn tables) opens with every table
    of today and the column filled from the Patient ID."""
    from appliance import db

    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE patients (patient_id TEXT PRIMARY KEY, patient_name TEXT NOT NULL DEFAULT '', "
        "birth_date TEXT NOT NULL DEFAULT '', sex TEXT NOT NULL DEFAULT '', issuer TEXT NOT NULL DEFAULT '', "
        "charset TEXT NOT NULL DEFAULT '');"
        "INSERT INTO patients (patient_id, patient_name) VALUES ('P1', 'DOE^JANE');")
    old.commit()
    old.close()
    conn = db.connect(tmp_path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert set(OWNERS) <= tables
        row = conn.execute("SELECT patient_id, id_value, patient_name FROM patients").fetchone()
        assert tuple(row) == ("P1", "P1", "DOE^JANE")
    finally:
        conn.close()


# --------------------------------------------------------------------------- import circles


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_imports(path: Path, known: set[str], root: Path = ROOT) -> set[str]:
    """The project modules a module imports, at module level or inside functions (a circle through a
    function-level import is still a circle, only hidden until that function runs), including
    `from pkg import mod` of a submodule; `if TYPE_CHECKING:` blocks do not count."""
    tree = ast.parse(path.read_text(), rel(path, root))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
               and node.test.id == "TYPE_CHECKING" for b in node.body for n in ast.walk(b)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    out.add(f"{base}.{alias.name}")
                elif base in known:
                    out.add(base)
    out.discard(name)
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    paths = sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*.py"))
    names = {module_name(p, root): p for p in paths}
    return {name: module_imports(path, set(names), root) for name, path in names.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (a list of modules, first == last), or None. A package importing its own
    submodule is not a circle unless the submodule imports back."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_no_import_circles_among_appliance_and_drivers():
    assert find_cycle(import_graph(ROOT)) is None


def test_the_supervisor_knows_nothing_of_the_station():
    """appliance.supervisor runs a plan: it imports no robots, discovery, panel, simulator or services."""
    graph = import_graph(ROOT)
    for name, imports in graph.items():
        if name.startswith("appliance.supervisor"):
            outside = {m for m in imports if not m.startswith("appliance.supervisor")}
            outside -= {"appliance.config", "appliance.atomicfile"}  # settings and a file helper: generic
            assert not outside, f"{name} imports {sorted(outside)}"


@pytest.mark.parametrize("second", ["from appliance import a\n", "import appliance.a\n", "from . import a\n"])
def test_the_circle_check_finds_a_circle(tmp_path, second):
    pkg = tmp_path / "appliance"
    pkg.mkdir()
    (tmp_path / "drivers").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from appliance.b import x\n")
    (pkg / "b.py").write_text(second)
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from appliance import a\n")
    graph = import_graph(tmp_path)
    assert find_cycle(graph) == ["appliance.a", "appliance.b", "appliance.a"]
    assert graph["appliance.c"] == set()  # for type checkers only: not an import at run time


def test_a_circle_through_a_function_level_import_is_found(tmp_path):
    """The station/supervisor circle of old: each imported the other inside a function."""
    pkg = tmp_path / "appliance"
    pkg.mkdir()
    (tmp_path / "drivers").mkdir()
    (pkg / "station.py").write_text("def run():\n    from appliance.supervisor import Supervisor\n")
    (pkg / "supervisor.py").write_text("class Supervisor:\n    def services(self):\n"
                                      "        from appliance.station import SERVICES\n")
    assert find_cycle(import_graph(tmp_path)) == ["appliance.station", "appliance.supervisor", "appliance.station"]
