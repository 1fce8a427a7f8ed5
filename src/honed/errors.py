"""Exceptions that carry what a user needs to fix their input.

`UserError` (and its subclasses) means "the input is wrong": the CLI prints one line
and exits 2.  Anything else escaping a pass is an internal failure: exit 1, naming the pass.
The library never calls ``sys.exit``; only ``honed.cli`` maps exceptions to exit codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class HonedError(Exception):
    """Base class of every exception honed raises on purpose."""


class UserError(HonedError):
    """Bad input (config, data, model path). Printed as one line; exit code 2."""


@dataclass
class ConfigProblem:
    """One problem found in a config: where (key path), what is wrong and how to fix it."""

    key: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.key}: {self.message}" if self.key else self.message
        return f"{text}; {self.fix}" if self.fix else text


@dataclass
class ConfigError(UserError):
    """All problems found in one config file, reported together (torchtune's habit)."""

    problems: list[ConfigProblem] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return where + " | ".join(str(p) for p in self.problems)


class DataError(UserError):
    """A data file or data source that cannot be read as asked."""


class ModelNotFoundError(UserError):
    """A model path, hub id or package file that does not resolve."""


class PassFailed(HonedError):
    """An internal failure inside a pass. Exit code 1; never cached."""

    def __init__(self, pass_name: str, cause: BaseException) -> None:
        super().__init__(f"pass '{pass_name}' failed: {type(cause).__name__}: {cause}")
        self.pass_name = pass_name
        self.cause = cause


class EvaluationFailed(HonedError):
    """An internal failure while scoring a model (a runtime that cannot run it). Exit code 1; never cached; a
    search records the trial as failed and goes on."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"evaluating {what} failed: {type(cause).__name__}: {cause}")
        self.cause = cause
