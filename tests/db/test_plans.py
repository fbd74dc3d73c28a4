"""The plans of the producer's per-batch statements stay linear in the batch.

psycopg prepares a statement after its 5th run, and PostgreSQL may then run a generic
plan, made without the parameters' values: it guesses 10 rows for an array's unnest and
1 for an owner's running rows. ``finish_tasks`` once joined its arrays to the rows in a
nested loop that scanned the whole batch again for each row: 64 outcomes took ~17 ms in
a drain instead of ~5, the producer's whole cycle. A nested loop may only reach its inner
rows through an index (one lookup per outer row), unless its outer side is a single row.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest

from stagerunner import store

pytestmark = [pytest.mark.db, pytest.mark.timeout(60)]

PER_BATCH = ["claim_tasks", "finish_tasks", "release_tasks", "find_cancelled", "find_orphans"]
LOOKUPS = {"Index Scan", "Index Only Scan", "Bitmap Heap Scan"}
ONE_ROW = {"Result"}


def generic_plan(conn: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    """The plan PostgreSQL uses for `name` once it has chosen a generic one."""
    names: list[str] = []

    def numbered(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    text = re.sub(r"%\((\w+)\)[sb]", numbered, store.sql_text(name)).replace("%%", "%")
    return explain_generic(conn, text, len(names))


def explain_generic(conn: psycopg.Connection[Any], text: str, params: int) -> dict[str, Any]:
    """The generic plan of `text`, a statement with `params` numbered parameters."""
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute(f"PREPARE probe AS {text}")
    nulls = ", ".join(["NULL"] * params)
    row = conn.execute(f"EXPLAIN (FORMAT JSON) EXECUTE probe({nulls})").fetchone()
    conn.execute("DEALLOCATE probe")
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


def rescans(plan: dict[str, Any]) -> list[str]:
    """Nested loops that read a whole set again for every row of a set."""
    found = []
    children = plan.get("Plans", [])
    if plan["Node Type"] == "Nested Loop":
        side = {c.get("Parent Relationship"): c for c in children}
        outer, inner = side["Outer"], side["Inner"]
        single = outer["Node Type"] in ONE_ROW or (
            outer["Node Type"] == "Aggregate" and outer.get("Strategy") == "Plain")
        if inner["Node Type"] not in LOOKUPS and not single:
            found.append(f"{outer['Node Type']} x {inner['Node Type']} "
                         f"{inner.get('CTE Name') or inner.get('Alias') or ''}")
    for child in children:
        found += rescans(child)
    return found


@pytest.fixture
def drained(conn):
    """A table as a drain leaves it, its statistics read: finished rows, rows waiting, and
    the running rows of a few owners (the planner's guesses follow the statistics)."""
    conn.execute("""
        INSERT INTO stagerunner.tasks (name, args, status, claimed_by, attempts, finished_at)
        SELECT 'tasks:noop', '[]',
               (ARRAY['success', 'waiting', 'running'])[1 + mod(i, 3)]::stagerunner.task_status,
               CASE WHEN mod(i, 3) = 2 THEN 'node-' || mod(i, 7) END,
               CASE WHEN mod(i, 3) = 1 THEN 0 ELSE 1 END,
               CASE WHEN mod(i, 3) = 0 THEN now() END
        FROM generate_series(1, 30000) AS i""")
    conn.execute("ANALYZE stagerunner.tasks")
    return conn


@pytest.mark.parametrize("name", PER_BATCH)
def test_a_generic_plan_reaches_each_row_once(drained, name):
    assert rescans(generic_plan(drained, name)) == []


@pytest.mark.parametrize("name", PER_BATCH)
def test_so_does_one_made_on_a_new_table(conn, name):
    """A node's first minute: the table has no statistics yet (the guesses differ)."""
    assert rescans(generic_plan(conn, name)) == []


def test_the_rule_catches_the_old_outcome_write(drained):
    """The rule itself: the old shape (the arrays joined as a table, the lock joined as a
    set) is caught."""
    old = """
        WITH free AS (SELECT id FROM stagerunner.tasks WHERE id = ANY($1::bigint[])
                      FOR UPDATE SKIP LOCKED)
        UPDATE stagerunner.tasks AS t SET attempts = o.attempt
        FROM unnest($1::bigint[], $2::integer[]) AS o(id, attempt)
        WHERE t.id = o.id AND t.id IN (SELECT id FROM free)
          AND t.status = 'running' AND t.claimed_by = $3 AND t.attempts = o.attempt"""
    assert rescans(explain_generic(drained, old, 3)) != []
