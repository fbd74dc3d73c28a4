import pytest

from stagerunner import migrations, store
from stagerunner.errors import SchemaMissing

pytestmark = pytest.mark.db


def test_schema_installs_twice_without_error(empty_db):
    with store.connect(empty_db) as conn:
        migrations.install_schema(conn)
        migrations.install_schema(conn)
        assert migrations.check_schema(conn) == migrations.SCHEMA_VERSION


def test_check_schema_names_the_command_that_installs_it(empty_db):
    with store.connect(empty_db) as conn, pytest.raises(SchemaMissing) as err:
        migrations.check_schema(conn)
    assert "python -m stagerunner migrate" in str(err.value)


def test_everything_lives_in_its_own_schema(conn):
    public = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert public == (0,)


def test_top_level_schema_file_is_the_packaged_one():
    from tests.helpers import ROOT

    assert (ROOT / "schema.sql").read_text() == migrations.schema_text()


def test_one_notify_per_insert_statement_not_per_row(connect):
    listener, writer = connect(), connect()
    listener.execute("LISTEN stagerunner_tasks")
    writer.execute("INSERT INTO stagerunner.tasks (name) SELECT 'tests.tasks:ok' FROM generate_series(1, 50)")
    notes = list(listener.notifies(timeout=1.0))
    assert [n.payload for n in notes] == ["default"]


def test_the_claim_uses_the_claim_index(conn):
    conn.execute("INSERT INTO stagerunner.tasks (name, status, finished_at) "
                 "SELECT 'x', 'success', now() FROM generate_series(1, 20000)")
    conn.execute("INSERT INTO stagerunner.tasks (name) SELECT 'x' FROM generate_series(1, 100)")
    conn.execute("ANALYZE stagerunner.tasks")
    sql = store.sql_text("claim_tasks").replace("%(queue)s", "'default'").replace("%(limit)s", "10") \
        .replace("%(owner)s", "'o'")
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql).fetchall())
    assert "tasks_claim_idx" in plan, plan


@pytest.mark.parametrize("column, value", [("args", "'\"a string\"'"), ("max_attempts", "0"),
                                           ("name", "''"), ("timeout_s", "-1")])
def test_named_constraints_refuse_impossible_rows(conn, column, value):
    import psycopg

    with pytest.raises(psycopg.errors.CheckViolation) as err:
        conn.execute(f"INSERT INTO stagerunner.tasks (name, {column}) VALUES ('x', {value})"
                     if column != "name" else f"INSERT INTO stagerunner.tasks (name) VALUES ({value})")
    assert "tasks_" in str(err.value)
