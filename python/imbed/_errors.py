"""imbed's exceptions: one base, ``ImbedError``, and each kind also a subclass of the built-in
exception Python code would catch for it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from imbed._imbed import Attempt


class ImbedError(Exception):
    """Every error imbed raises."""


class ConfigError(ImbedError, ValueError):
    """The configuration could not be read or is invalid (the message names file and line)."""


class InputError(ImbedError, ValueError):
    """An image could not be read or is not a usable image."""


class UsageError(ImbedError, ValueError):
    """A call was misused (an empty text, an unknown purpose); the message says what to do."""


class ExhaustedError(ImbedError, RuntimeError):
    """Every step of the chain was tried and none answered; ``attempts`` says why each failed."""

    attempts: list[Attempt]

    def __init__(self, message: str, attempts: Sequence[Attempt] = ()) -> None:
        super().__init__(message)
        self.attempts = list(attempts)


class EngineError(ImbedError, RuntimeError):
    """The plugin engine or the async runtime could not start."""


class ClosedError(ImbedError, RuntimeError):
    """The ``Imbed`` was closed."""


class CacheError(ImbedError, OSError):
    """The persistent cache (SQLite) failed."""


class EmptySpaceError(ImbedError, LookupError):
    """A search found nothing indexed in the query's embedding space."""


class SpaceMismatchError(ImbedError, ValueError):
    """Vectors of two different embedding spaces were to be compared."""


__all__ = [
    "CacheError",
    "ClosedError",
    "ConfigError",
    "EmptySpaceError",
    "EngineError",
    "ExhaustedError",
    "ImbedError",
    "InputError",
    "SpaceMismatchError",
    "UsageError",
]
