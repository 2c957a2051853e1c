"""The project's own error types.

Every problem a user can cause (a bad path, a bad config, a bad file) is raised as an
:class:`LtdError` whose message is one line naming the problem and the fix. The CLI prints that
line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LtdError(Exception):
    """A user-facing error: one line, names the problem and the fix.

    Line breaks that reach a message from a file's contents (a key, a value) are escaped, so the
    message stays one line whatever the file holds.
    """

    def __init__(self, message: str = ""):
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"))


class PairError(LtdError):
    """A draft/target pair cannot be built, found or used together."""


class ConfigError(LtdError):
    """A config, spec or command-line value is invalid."""


class PromptError(LtdError):
    """A prompt or prompt file cannot be used."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none), for one-line errors."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else exc.__class__.__name__
