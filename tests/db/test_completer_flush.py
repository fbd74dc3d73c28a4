import pytest

from stagerunner.completer import Completer
from stagerunner.protocol import Outcome, Status

pytestmark = pytest.mark.db
OWNER = "n/1"


def test_a_row_the_database_refuses_does_not_block_the_others(conn, insert_task, get_task):
    good = insert_task(status="running", claimed_by=OWNER)
    bad = insert_task(status="running", claimed_by=OWNER)
    completer = Completer(OWNER)
    completer.add(Outcome(good["id"], 1, Status.SUCCESS, 1.0, result="42"), lost=0, max_attempts=1)
    # NUL cannot live in a PostgreSQL text or jsonb value
    completer.add(Outcome(bad["id"], 1, Status.SUCCESS, 1.0, result='"a\\u0000b"'), lost=0, max_attempts=1)
    assert completer.flush(conn) == 2
    assert get_task(good["id"])["result"] == 42
    row = get_task(bad["id"])
    assert row["status"] == "error" and "could not be stored" in row["last_error"]
    assert completer.pending == []
