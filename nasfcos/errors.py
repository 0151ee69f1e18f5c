"""The toolkit's own exception types.

Every error a user can cause (bad file, bad flag, corrupt cache, missing optional
backend) is raised as a :class:`NasfcosError` subclass.  The command line turns
these into a one-line message and a non-zero exit code; anything else is a bug.
"""

from __future__ import annotations


class NasfcosError(Exception):
    """Base class of every user-facing error in nasfcos."""


class GenotypeError(NasfcosError, ValueError):
    """A genotype document is malformed, invalid or unsafe."""


class BackendUnavailable(NasfcosError):
    """An optional backend (TensorRT, CUDA, Ray, ...) is not installed or not usable here."""


class CacheError(NasfcosError):
    """A feature cache, checkpoint or archive is missing, corrupt or mismatched."""


def first_line(exc: BaseException, limit: int | None = 200) -> str:
    """The first line of ``exc``'s message (its type name when the message is empty), cut to
    ``limit`` characters: the text of a one-line error built from another exception."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line if limit is None else line[:limit]


class FieldError(NasfcosError, ValueError):
    """A value that breaks the rule of the object it belongs to.  ``field`` names it (an
    options or config field); the command line shows it as the matching ``--flag``."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.reason = field, message
        super().__init__(f"{field}: {message}")

    def __reduce__(self) -> tuple[object, ...]:  # picklable (a process pool or Ray task re-raises it)
        return (type(self), (self.field, self.reason))


def short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters: a value quoted in a one-line
    error (a tensor's repr spans lines)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
