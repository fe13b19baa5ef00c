"""One hierarchy for the errors bertrec raises on purpose, each kind with its exit code.

Every error a user can fix is a :class:`BertrecError`: its message names what is wrong and where
(the file, row, column and value; the params key; the registry's version). The CLI maps each kind
to one exit code and prints the message on one line (:func:`exit_code`); anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

# The exit code of `bertrec --fail-on-drift drift` when drift is found: a finding, not an error.
DRIFT_FOUND = 3


class BertrecError(Exception):
    """Base of every error bertrec raises on purpose."""

    exit_code = 1


class ConfigError(BertrecError, ValueError):
    """params.yaml, an override or a command-line argument is invalid; the message names the key."""

    exit_code = 2


class DataError(BertrecError, ValueError):
    """Bad input data; the message names the file, the row, the column and the value."""

    exit_code = 4


class MissingInputError(BertrecError, FileNotFoundError):
    """A step's input is missing; the message names the file and the step that writes it."""

    exit_code = 5


class RegistryError(BertrecError, RuntimeError):
    """A registry operation cannot be done (no champion to roll back, missing baselines, ...)."""

    exit_code = 6


class ServingError(BertrecError, ValueError):
    """A recommendation request cannot be answered as asked (unknown item or user, bad new items)."""

    exit_code = 7


class UnknownItemError(ServingError, KeyError):
    """A history names an item id that the bundle does not know."""

    __str__ = Exception.__str__  # the message, not KeyError's quoted repr


class UnknownUserError(ServingError, KeyError):
    """A user id has no history in the bundle."""

    __str__ = Exception.__str__


class ReplayError(BertrecError, RuntimeError):
    """The replay cannot start or a step of it failed; the message names the command."""

    exit_code = 8


class DriftError(BertrecError, ValueError):
    """The drift check cannot run as configured (a champion without its data window, ...)."""

    exit_code = 9


def exit_code(error: BertrecError) -> int:
    """The process exit code of an error kind."""
    return type(error).exit_code
