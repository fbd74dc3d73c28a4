import time

import pytest

from stagerunner import migrations, store
from stagerunner.errors import SchemaLocked, SchemaMissing

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


@pytest.mark.parametrize("column, value", [
    ("args", "'\"a string\"'"), ("max_attempts", "0"), ("name", "''"), ("timeout_s", "-1"),
    # what the enqueue-only role may write, bounded: no row can stop a claim or a page
    ("run_at", "'infinity'"), ("run_at", "'-infinity'"), ("run_at", "'0001-01-01 BC'"),
    ("run_at", "'10000-01-01'"), ("created_at", "'infinity'"),
    ("args", "jsonb_build_array(repeat('x', 1048576))"),  # 1 MiB + the JSON around it
    ("args", "(SELECT jsonb_agg(g) FROM generate_series(1, 200000) g)"),  # a long list
])
def test_named_constraints_refuse_impossible_rows(conn, column, value):
    import psycopg

    with pytest.raises(psycopg.errors.CheckViolation) as err:
        conn.execute(f"INSERT INTO stagerunner.tasks (name, {column}) VALUES ('x', {value})"
                     if column != "name" else f"INSERT INTO stagerunner.tasks (name) VALUES ({value})")
    assert "tasks_" in str(err.value)


# Migrations ---------------------------------------------------------------------------

# The digest of schema.sql at each version. Whoever changes schema.sql bumps the version
# it records (its last statement) and adds the new digest here: a schema that changed
# under an old version number would never be applied to an existing database.
SCHEMA_DIGESTS = {
    2: "438ebba26b715e2ba94959bb52588ff6434ad39a65fd03a52b4af12b428a8f08",
    3: "8809096e3788abd97754c05d22af8c3244addbbd1a185d63cbcd473d7cf68edd",
    4: "c06219f23d2f288d43901496bfb343108439582215807b8d8037d1eb07043089",
    5: "fc356a06cc6a04578994688402f41a0fccb8aca53fd462b4b9e63cb334371929",
}


def test_the_schema_version_changes_whenever_the_schema_does():
    import hashlib

    digest = hashlib.sha256(migrations.schema_text().encode()).hexdigest()
    assert SCHEMA_DIGESTS.get(migrations.SCHEMA_VERSION) == digest, (
        f"schema.sql changed: bump the version it records (now {migrations.SCHEMA_VERSION}) and "
        f"add {migrations.SCHEMA_VERSION + 1 if migrations.SCHEMA_VERSION in SCHEMA_DIGESTS else migrations.SCHEMA_VERSION}: "
        f'"{digest}" to SCHEMA_DIGESTS')
    assert list(SCHEMA_DIGESTS.values()).count(digest) == 1


@pytest.mark.timeout(30)
def test_a_current_schema_means_no_ddl_and_no_lock(db, connect):
    blocker = connect()
    blocker.execute("BEGIN")
    blocker.execute("LOCK TABLE stagerunner.tasks IN ACCESS EXCLUSIVE MODE")  # a long transaction
    try:
        with store.connect(db) as conn:
            started = time.monotonic()
            assert migrations.migrate(conn) is False
            assert time.monotonic() - started < 1.0
    finally:
        blocker.execute("ROLLBACK")


@pytest.mark.timeout(60)
def test_an_upgrade_behind_a_long_transaction_gives_up_in_bounded_time_then_succeeds(
        db, connect, caplog):
    admin = connect()
    admin.execute("DELETE FROM stagerunner.schema_version")
    admin.execute("INSERT INTO stagerunner.schema_version VALUES (1)")  # as if installed by 0.1
    blocker = connect()
    blocker.execute("BEGIN")
    blocker.execute("SELECT count(*) FROM stagerunner.tasks")  # holds ACCESS SHARE on tasks
    reader = connect()
    try:
        with store.connect(db) as conn:
            started = time.monotonic()
            with pytest.raises(SchemaLocked):
                migrations.migrate(conn, attempts=3)
            assert time.monotonic() - started < 5.0
            # while it waited, other sessions were only ever held up for a lock timeout
            reader.execute("SELECT count(*) FROM stagerunner.tasks")
        assert "schema.lock_wait" in caplog.text or any(
            getattr(r, "event", "") == "schema.lock_wait" for r in caplog.records)
    finally:
        blocker.execute("ROLLBACK")
    with store.connect(db) as conn:
        assert migrations.migrate(conn) is True
        assert migrations.check_schema(conn) == migrations.SCHEMA_VERSION


def test_a_database_newer_than_the_code_is_refused(db, connect):
    connect().execute("INSERT INTO stagerunner.schema_version VALUES (%s)",
                      [migrations.SCHEMA_VERSION + 1])
    with store.connect(db) as conn, pytest.raises(SchemaMissing) as err:
        migrations.migrate(conn)
    assert "newer" in str(err.value)


def test_compressed_arguments_are_measured_as_text(conn):
    """A value copied from a table arrives compressed: 12 MB of text (control characters,
    escaped six to one) stored in ~8 kB must still be refused."""
    import psycopg

    conn.execute("SET default_toast_compression = lz4")
    conn.execute("CREATE TEMP TABLE packed (j jsonb)")
    conn.execute("INSERT INTO packed SELECT jsonb_build_array(repeat(chr(1), 2000000))")
    with pytest.raises(psycopg.errors.CheckViolation, match="tasks_args_at_most_1_mib"):
        conn.execute("INSERT INTO stagerunner.tasks (name, args) SELECT 'x', j FROM packed")


def test_no_time_of_a_row_can_leave_the_years_1_to_9999(conn, insert_task):
    import psycopg

    done = insert_task(status="success")
    for column in ("finished_at", "claimed_at", "cancel_requested_at"):
        with pytest.raises(psycopg.errors.CheckViolation, match="tasks_times_in_range"):
            conn.execute(f"UPDATE stagerunner.tasks SET {column} = 'infinity' WHERE id = %s",
                         [done["id"]])


def test_an_insert_into_more_queues_than_a_notify_can_name_wakes_every_node(conn, connect):
    listener = connect()
    listener.execute("LISTEN stagerunner_tasks")
    conn.execute("INSERT INTO stagerunner.tasks (name, queue) "
                 "SELECT 'x', 'tenant-' || gen_random_uuid() FROM generate_series(1, 300)")
    conn.execute("INSERT INTO stagerunner.tasks (name, queue) VALUES ('x', 'mail')")
    payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=2)]
    assert payloads == ["*", "mail"]


def test_arguments_up_to_1_mib_are_accepted(conn):
    conn.execute("INSERT INTO stagerunner.tasks (name, args) "
                 "VALUES ('x', jsonb_build_array(repeat('x', 1048576 - 4)))")  # ["…"]: 1 MiB


def test_upgrading_to_5_ends_live_rows_out_of_bounds_and_clamps_their_times(db, connect):
    admin = connect()
    for constraint in ("tasks_times_in_range", "tasks_args_at_most_1_mib"):  # as in 4
        admin.execute(f"ALTER TABLE stagerunner.tasks DROP CONSTRAINT {constraint}")
    far, huge, done, fine, late = [admin.execute(
        "INSERT INTO stagerunner.tasks (name, args, run_at, status, finished_at) "
        "VALUES ('x', %s::jsonb, %s, %s, %s) RETURNING id", row).fetchone()[0] for row in (
            ("[]", "infinity", "waiting", None),
            ('["' + "x" * 2_000_000 + '"]', "now", "waiting", None),
            ('["' + "x" * 2_000_000 + '"]', "now", "success", "now"),  # history: kept
            ("[1]", "now", "waiting", None),
            ("[2]", "now", "error", "infinity"))]
    admin.execute("UPDATE stagerunner.schema_version SET version = 4")
    with store.connect(db) as conn:
        assert migrations.migrate(conn) is True
    got = {r[0]: r[1:] for r in admin.execute(
        "SELECT id, status::text, run_at < 'infinity', last_error FROM stagerunner.tasks")}
    assert got[far][:2] == ("waiting", True)
    assert got[huge][0] == "error" and got[huge][2].startswith("arguments too large: 200000")
    assert got[done][0] == "success" and got[fine] == ("waiting", True, None)
    assert admin.execute("SELECT finished_at < 'infinity', claimed_at, cancel_requested_at "
                         "FROM stagerunner.tasks WHERE id = %s", [late]).fetchone() == (True, None, None)
    assert migrations.check_schema(admin) == 5
