"""Errors the resources raise instead of driver internals."""

from __future__ import annotations


class DatabaseUnavailableError(RuntimeError):
    """A database could not be reached or went away; the message names which one."""


class SyncAlreadyRunningError(RuntimeError):
    """Another run holds this pipeline's advisory lock."""
