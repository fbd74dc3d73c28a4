"""The house rules, checked: consumers stay lean and database-free, the runtime never
imports the harness, modules import each other one way only, SQL lives in sql/, nothing
is unpickled, and no runtime module outgrows its budget."""

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

RUNTIME = ROOT / "src" / "stagerunner"
SIZE_BUDGET = 330  # lines; the house aims at ~300


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.split())


def _module_name(path: Path) -> str:
    parts = path.relative_to(RUNTIME.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every stagerunner module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from stagerunner import store` imports the module store, not the package's API
            if node.module != "stagerunner":
                found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name.split(".")[0].startswith("stagerunner")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in RUNTIME.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name}
            for name, path in modules.items()}


def test_consumers_never_import_psycopg_or_pydantic():
    loaded = _modules_after("import stagerunner.consumer, stagerunner.executor, stagerunner.child, stagerunner.forker")
    assert "psycopg" not in loaded
    assert "pydantic" not in loaded


def test_a_node_launches_its_consumers_before_it_imports_psycopg():
    """cli.cmd_run launches the consumers with what spawn and stages need, so that the
    rest of the consumers' start overlaps the supervisor's import of psycopg (with the
    DSN's check, which ``config.load(check_dsn=False)`` leaves to ``open_database``) and
    the schema check; the fork server that forks them loads no psycopg either."""
    assert "psycopg" not in _modules_after("import stagerunner.stageserver")
    loaded = _modules_after("import stagerunner.cli, stagerunner.config, stagerunner.procs, "
                            "stagerunner.registry, stagerunner.spawn, stagerunner.stages")
    assert "psycopg" not in loaded


def test_task_modules_importing_stagerunner_stay_lean():
    loaded = _modules_after("import stagerunner, stagerunner.client, stagerunner.registry, tests.tasks")
    heavy = {"psycopg", "pydantic", "psycopg_pool", "asyncio", "sqlalchemy", "django"}
    assert heavy & loaded == set()


def test_the_runtime_never_imports_the_harness():
    offenders = [f"{p.relative_to(ROOT)}: {m}" for p in RUNTIME.rglob("*.py") for m in _imports(p)
                 if m.startswith("stagerunner_tools")]
    assert offenders == []


def test_runtime_modules_import_each_other_one_way_only():
    graph = _graph()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    assert cycles == []


def test_no_sql_outside_the_sql_directory():
    offenders = []
    for path in RUNTIME.rglob("*.py"):
        text = path.read_text()
        for keyword in ("SELECT ", "UPDATE stagerunner", "INSERT INTO", "DELETE FROM"):
            if keyword in text and path.name != "store.py":  # store.py loads sql/
                offenders.append(f"{path.relative_to(RUNTIME)}: {keyword}")
    assert offenders == []


def test_nothing_is_unpickled():
    for path in (ROOT / "src").rglob("*.py"):
        text = path.read_text()
        assert "pickle.loads" not in text and "marshal.loads" not in text, path


def test_runtime_modules_stay_within_their_size_budget():
    sizes = {str(p.relative_to(RUNTIME)): len(p.read_text().splitlines())
             for p in RUNTIME.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > SIZE_BUDGET} == {}


def test_every_named_statement_is_used():
    """One named statement per transition: a file in sql/ that no module names is a rule
    nobody runs any more (and a place a reader would look for it)."""
    code = "\n".join(p.read_text() for p in RUNTIME.rglob("*.py"))
    unused = [p.stem for p in (RUNTIME / "sql").glob("*.sql") if f'"{p.stem}"' not in code]
    assert unused == []
