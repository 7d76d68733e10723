"""The error type for problems the user can fix before anything runs.

Raised for what the user gave that cannot work: input that matches no file, a model that does not resolve,
a misspelled flag, a task file that cannot be read. The CLI prints it as one line and exits 2 before the
pipeline starts, so nothing is written; everything else that fails is the run's failure (exit 1).
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Something the user gave cannot work; the message names it and says how to fix it, on one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever the cause's text held
