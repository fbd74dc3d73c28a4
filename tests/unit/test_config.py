import pytest

from stagerunner import cpus
from stagerunner.config import derived_consumers, load, normalize_dsn
from stagerunner.errors import ConfigError


def test_defaults_need_no_environment():
    s = load({})
    default = derived_consumers(cpus.usable_cpus())[0]
    assert s.consumers == default and s.job_timeout == 1.0
    assert s.queue_consumers() == {"default": default}
    assert s.task_modules == []


def test_values_are_read_from_stagerunner_variables():
    s = load({"STAGERUNNER_CONSUMERS": "3", "STAGERUNNER_JOB_TIMEOUT": "0.5",
              "STAGERUNNER_TASK_MODULES": "app.tasks, app.mail", "STAGERUNNER_LOG_FORMAT": "JSON"})
    assert (s.consumers, s.job_timeout, s.task_modules, s.log_format) == (
        3, 0.5, ["app.tasks", "app.mail"], "json")


def test_queues_take_counts_and_default_to_consumers():
    s = load({"STAGERUNNER_QUEUES": "default,mail=2", "STAGERUNNER_CONSUMERS": "5"})
    assert s.queue_consumers() == {"default": 5, "mail": 2}


def test_a_bad_value_names_the_variable_and_the_value():
    with pytest.raises(ConfigError) as err:
        load({"STAGERUNNER_CONSUMERS": "many"})
    assert "STAGERUNNER_CONSUMERS='many'" in str(err.value)


def test_an_unknown_variable_fails_with_a_suggestion():
    with pytest.raises(ConfigError) as err:
        load({"STAGERUNNER_JOB_TIMOUT": "2"})
    assert "STAGERUNNER_JOB_TIMOUT" in str(err.value)
    assert "did you mean STAGERUNNER_JOB_TIMEOUT" in str(err.value)


def test_test_suite_variables_are_not_settings():
    settings = load({"STAGERUNNER_TEST_DATABASE_URL": "postgresql://x"})  # no "unknown setting"
    assert settings.database_url is None


@pytest.mark.parametrize("env", [
    {"STAGERUNNER_JOB_TIMEOUT": "0"},
    {"STAGERUNNER_JOB_TIMEOUT": "5", "STAGERUNNER_MAX_JOB_TIMEOUT": "2"},
    {"STAGERUNNER_LOG_LEVEL": "loud"},
    {"STAGERUNNER_TASK_MODULES": "app/tasks.py"},
    {"STAGERUNNER_QUEUES": "mail=two"},
    {"STAGERUNNER_CHILD_REUSE": "0"},
    {"STAGERUNNER_DATA_DIR": ""},  # would be the working directory
    {"STAGERUNNER_DATA_DIR": "  "},
    {"STAGERUNNER_METRICS_HOST": ""},  # would bind every interface
])
def test_invalid_values_are_refused(env):
    with pytest.raises(ConfigError) as err:
        load(env)
    assert "STAGERUNNER_" in str(err.value)


@pytest.mark.parametrize("env", [
    {"STAGERUNNER_DATABASE_URL": "mysql://u:hunter2@h/db"},  # not PostgreSQL
    {"STAGERUNNER_DATABASE_URL": "postgresql://u:hunter2@h:port/db"},  # not a port
    {"STAGERUNNER_DATABASE_URLS": "postgresql://u:hunter2@h/db"},  # a misspelt name
    {"STAGERUNNER_DATABASE_URL": "postgresql://u:hun/ter2@h/db"},  # "hun" is not a port
    {"STAGERUNNER_DATABASE_URL": "postgresql://u:hunter 2/x@h/db"},  # a space and a '/'
    {"STAGERUNNER_DATABASE_URL": "postgresql://u:hun'ter/2@h/db"},  # a quote and a '/'
])
def test_a_bad_database_url_never_shows_the_password(env):
    with pytest.raises(ConfigError) as err:
        load(env)
    assert "hunter2" not in str(err.value) and "ter2" not in str(err.value)
    assert "ter/2" not in str(err.value) and "2/x" not in str(err.value)
    assert "hun" not in str(err.value).replace("hunter", "")  # nor a piece of it
    assert next(iter(env)) in str(err.value)  # it still names the variable


def test_sqlalchemy_style_urls_are_accepted():
    assert normalize_dsn("postgresql+psycopg://u@h/db", "X") == "postgresql://u@h/db"
    with pytest.raises(ConfigError):
        normalize_dsn("mysql://u@h/db", "X")


def test_dsn_order_is_stagerunner_then_database_url_then_pg_variables(monkeypatch):
    for var in ("DATABASE_URL", "PGHOST", "PGDATABASE", "PGSERVICE"):
        monkeypatch.delenv(var, raising=False)
    assert load({}).dsn() is None
    monkeypatch.setenv("PGHOST", "/run/postgresql")
    assert load({}).dsn() == ""
    monkeypatch.setenv("DATABASE_URL", "postgresql://a@h/one")
    assert load({}).dsn() == "postgresql://a@h/one"
    assert load({"STAGERUNNER_DATABASE_URL": "postgresql://b@h/two"}).dsn() == "postgresql://b@h/two"


def test_jobs_get_the_environment_without_stagerunner_variables(monkeypatch):
    monkeypatch.setenv("STAGERUNNER_NODE_NAME", "n1")
    monkeypatch.setenv("APP_SETTING", "kept")
    env = load({}).job_environment()
    assert env["APP_SETTING"] == "kept"
    assert not [k for k in env if k.startswith("STAGERUNNER_")]


@pytest.mark.parametrize("env, says", [
    ({"STAGERUNNER_QUEUES": "mail=0,default=2"}, "STAGERUNNER_QUEUES: every queue needs at least 1 consumer, not mail=0"),
    ({"STAGERUNNER_NODE_EXPIRY": "0.5"}, "STAGERUNNER_NODE_EXPIRY=0.5 must be longer than STAGERUNNER_HEARTBEAT_INTERVAL=1"),
    ({"STAGERUNNER_WEB_USER": "bob"}, "STAGERUNNER_WEB_USER='bob' needs STAGERUNNER_WEB_PASSWORD"),
    ({"STAGERUNNER_WEB_PASSWORD": "x" * 20}, "STAGERUNNER_WEB_PASSWORD needs STAGERUNNER_WEB_USER"),
])
def test_settings_that_disagree_are_named_with_their_values(env, says):
    with pytest.raises(ConfigError) as err:
        load(env)
    assert says in str(err.value) and "Value error" not in str(err.value)
    assert "x" * 20 not in str(err.value)  # a password is never shown
