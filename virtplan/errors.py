"""Errors virtplan raises. Every one carries a single readable message for the CLI."""

from __future__ import annotations

from dataclasses import dataclass


class VirtplanError(Exception):
    """Base class: an expected failure whose message is shown to the user as is."""


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of one resource, with a hint on how to fix it."""

    address: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.address}: {self.field}: {self.message}"


class ValidationError(VirtplanError):
    """The stack is invalid; nothing was applied. Lists every problem found."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        noun = "error" if len(errors) == 1 else "errors"
        super().__init__(f"stack is invalid ({len(errors)} {noun}); nothing was changed:\n{lines}")


class StackLoadError(VirtplanError):
    """The stack program could not be loaded (missing file, exception while running it)."""


class OwnershipError(VirtplanError):
    """An object exists on a host but this stack cannot prove it owns it."""


class NotSupportedError(VirtplanError):
    """A feature that is declared in the model but not implemented yet."""


class ConnectionFailed(VirtplanError):
    """A libvirt host could not be reached."""


class ConnectionTimedOut(ConnectionFailed):
    """A libvirt host did not answer within the connect timeout."""


class ConfirmationRequired(VirtplanError):
    """A destructive plan was not confirmed."""


class ApplyError(VirtplanError):
    """Apply stopped at a failure; `report` says what was done and what was not."""

    def __init__(self, message: str, report: object | None = None):
        self.report = report
        super().__init__(message)


class ApplyInterrupted(ApplyError):
    """The apply was interrupted (Ctrl-C): the changes in flight finished, the rest did not start."""


class HostLost(ApplyError):
    """The connection to a host broke during the apply."""
