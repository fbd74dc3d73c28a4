"""The few errors that cross module lines. Each docstring is its default message."""

from __future__ import annotations


class StagerunnerError(Exception):
    """stagerunner failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(StagerunnerError):
    """The configuration is invalid."""


class SchemaMissing(StagerunnerError):
    """The stagerunner schema is not installed in this database; run `python -m stagerunner migrate`."""


class NotJSON(StagerunnerError):
    """Task arguments must be JSON: lists, objects, strings, numbers, booleans and null."""


class ArgumentsTooLarge(StagerunnerError):
    """Task arguments are at most 1 MiB of JSON (the schema's tasks_args_at_most_1_mib)."""


class UnknownTask(StagerunnerError):
    """The task name is not registered in any module listed in STAGERUNNER_TASK_MODULES."""


class BadArguments(StagerunnerError):
    """The arguments do not match the task's signature."""


class SchemaLocked(StagerunnerError):
    """The schema could not be upgraded: another transaction kept a lock on it."""
