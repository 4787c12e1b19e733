"""The one error type users see.

Every problem caused by the user's input (a file, a tensor, an option) is raised as an
:class:`AdvkitError` whose message is one line saying what is wrong and where. The CLI
prints that line and exits with code 2; library users catch the exception.
"""

from __future__ import annotations


class AdvkitError(Exception):
    """Bad input: the message names the problem and where it is, on one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class KnowledgeError(AdvkitError):
    """An attack asked the model for more than its threat model's knowledge allows."""


class QueryBudgetExceeded(AdvkitError):
    """An attack asked a model view for more queries than its budget leaves."""
