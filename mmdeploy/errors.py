"""The one exception type for user errors: a message and a hint, shown as one line by the CLI."""

from __future__ import annotations


class MMDeployError(Exception):
    """A problem with the user's input or environment that the user can fix.

    ``message`` names the problem, ``hint`` says how to fix it. The CLI prints
    ``error: <message> (hint: <hint>)`` and exits with code 1.
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.replace("\n", " ")
        return f"{text} (hint: {self.hint})" if self.hint else text
