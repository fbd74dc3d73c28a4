import inspect

import pytest

import tests.tasks  # noqa: F401  registers the test tasks
from stagerunner import registry, task
from stagerunner.errors import UnknownTask

ALLOWED = ["tests.tasks"]


def test_registered_tasks_resolve_by_their_stable_name():
    assert registry.resolve("tests.tasks:add", ALLOWED).func(1, 2) == 3
    spec = registry.resolve("custom.name", ALLOWED)
    assert (spec.max_attempts, spec.timeout, spec.priority) == (5, 0.5, 3)


def test_an_integer_timeout_is_kept_as_a_float():
    def whole_seconds() -> None:
        pass

    spec = registry.register(whole_seconds, name="tests.unit.whole_seconds", timeout=10)
    assert spec.timeout == 10.0 and type(spec.timeout) is float


@pytest.mark.parametrize("name, reason", [
    ("os:system", "unknown task"),
    ("builtins:eval", "unknown task"),
    ("tests.tasks:system", "unknown task"),  # re-exported, not a @task
    ("tests.tasks:undecorated", "unknown task"),
    ("tests.tasks:_private", "private"),
    ("tests.tasks:__class__", "dunder"),
    ("__import__", "dunder"),
    ("tests.tasks:ok; rm -rf /", "invalid task name"),
    ("", "invalid task name"),
])
def test_names_outside_the_registry_are_refused_with_a_reason(name, reason):
    with pytest.raises(UnknownTask) as err:
        registry.resolve(name, ALLOWED)
    assert reason in str(err.value)


def test_a_task_from_a_module_that_is_not_listed_is_refused():
    import tests.other_tasks  # noqa: F401  registered, but not allowed

    with pytest.raises(UnknownTask) as err:
        registry.resolve("tests.other_tasks:outside", ALLOWED)
    assert "not in STAGERUNNER_TASK_MODULES" in str(err.value)


def test_resolving_never_imports_anything():
    import sys

    before = set(sys.modules)
    with pytest.raises(UnknownTask):
        registry.resolve("antigravity:fly", ALLOWED)
    assert "antigravity" not in sys.modules and set(sys.modules) == before


def test_the_decorated_function_stays_callable():
    assert tests.tasks.add(2, 3) == 5
    assert tests.tasks.add.name == "tests.tasks:add"


def test_task_options_are_validated():
    def job() -> None:
        pass

    with pytest.raises(ValueError):
        task(name="t.job", max_attempts=0)(job)
    with pytest.raises(ValueError):
        task(name="t.job", timeout=-1)(job)
    with pytest.raises(TypeError):
        task(print)


def test_private_functions_cannot_be_registered():
    def _hidden() -> None:
        pass

    with pytest.raises(UnknownTask) as err:
        task(name="t._hidden")(_hidden)
    assert "private" in str(err.value)


def test_a_call_shape_that_bound_once_is_not_bound_again_and_hostile_shapes_stay_bounded(
        monkeypatch):
    """Binding depends on the shape of a call (positional count, keyword names), so the
    check remembers shapes that bound; a bad shape is refused every time, and a stream of
    distinct shapes (hostile rows) does not grow the memory past its cap."""
    from stagerunner import arguments
    from stagerunner.errors import BadArguments

    monkeypatch.setattr(arguments, "_BOUND", {})
    spec = registry.resolve("tests.tasks:add", ["tests.tasks"])
    registry.check_arguments(spec, "[1, 2]")
    assert (id(spec.signature), 2, ()) in arguments._BOUND
    for _ in range(2):
        with pytest.raises(BadArguments, match="tests.tasks:add"):
            registry.check_arguments(spec, "[1]")
    def anything(**kwargs):
        return kwargs

    signature = inspect.signature(anything)
    for i in range(2 * arguments._BOUND_MAX):  # every one binds, each a new shape
        arguments.check(signature, [], {f"k{i}": 1})
    assert len(arguments._BOUND) == arguments._BOUND_MAX
    with pytest.raises(TypeError):  # past the cap the check still binds
        arguments.check(signature, [1], {})


def test_only_registered_names_are_remembered_as_checked():
    """The name check is skipped for a name seen before, but only a registered one is
    remembered: rows full of made-up names cannot grow the memo, and each is refused."""
    before = set(registry._CHECKED)
    for i in range(200):
        for name in (f"tests.tasks:nope{i}", f"tests.tasks:_p{i}", f"bad name {i}"):
            spec, why = registry.admit(name, "[]", ALLOWED)
            assert spec is None and why
    assert registry._CHECKED - before <= {"tests.tasks:add"}
    assert registry.admit("tests.tasks:add", "[1, 2]", ALLOWED)[0] is not None
    assert "tests.tasks:add" in registry._CHECKED
    assert registry.admit("tests.tasks:add", "[1, 2]", ALLOWED)[0] is not None  # from the memo
    assert registry.admit(["not", "a", "str"], "[]", ALLOWED)[0] is None  # type: ignore[arg-type]
