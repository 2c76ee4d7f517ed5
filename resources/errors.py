"""Errors the resources raise instead of driver internals."""

from __future__ import annotations


class DatabaseUnavailableError(RuntimeError):
    """A database could not be reached or went away; the message names which one."""


class SyncAlreadyRunningError(RuntimeError):
    """Another run holds this pipeline's advisory lock."""


class ReplicationSlotLostError(RuntimeError):
    """A logical replication slot can no longer give changes (its WAL was removed): it must be recreated."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of `error`'s message (drivers append pages of detail), or its type's name when empty."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
