"""The project's own error types. The type decides what happens next: a transient error is
retried on the next reconcile; a permanent one is reported (commit status, log) and waits for a
new commit."""

from __future__ import annotations


class CanaryError(Exception):
    """Base of every error the controller reports."""

    transient = False


class InputError(CanaryError):
    """The deploy repository holds something the controller cannot use: names file and field."""

    def __init__(self, file: str, field: str, problem: str) -> None:
        self.file, self.field, self.problem = file, field, problem
        super().__init__(f"{file}: {field}: {problem}" if field else f"{file}: {problem}")


class ForbiddenError(CanaryError):
    """The repository asks for something the controller is not allowed to do (namespace, kind)."""


class TransientError(CanaryError):
    """A server is unreachable or busy: try again later, change nothing meanwhile."""

    transient = True


class ApiError(CanaryError):
    """A server refused a request for good (validation, conflict): the message is the server's."""
