import pytest

from stagerunner.client import to_json
from stagerunner.errors import NotJSON
from stagerunner.logs import redact
from stagerunner.restarts import RestartIntensity


def test_restart_intensity_allows_bursts_up_to_the_limit_within_the_window():
    limit = RestartIntensity(limit=2, window=10.0)
    assert limit.allow(0.0) and limit.allow(1.0)
    assert not limit.allow(2.0)
    assert RestartIntensity(2, 10.0).allow(0.0)


def test_restart_intensity_forgets_restarts_outside_the_window():
    limit = RestartIntensity(limit=1, window=5.0)
    assert limit.allow(0.0)
    assert limit.allow(6.0)
    assert not limit.allow(7.0)


@pytest.mark.parametrize("text", [
    "postgresql://user:hunter2@db.example/app",
    "host=db password=hunter2 user=x",
    "connection failed: postgres://u:hunter2@10.0.0.1:5432/x?sslmode=require",
    "password='hunter2'",
])
def test_passwords_are_redacted(text):
    assert "hunter2" not in redact(text)


def test_arguments_must_be_json():
    assert to_json("t", [1, "a", None, {"k": [True]}]) == '[1, "a", null, {"k": [true]}]'
    assert to_json("t", (1, 2)) == "[1, 2]"
    for bad in ([{1, 2}], [b"bytes"], [float("nan")], {"when": object()}, "a string"):
        with pytest.raises(NotJSON):
            to_json("t", bad)
