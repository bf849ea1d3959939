"""Exceptions of the tuner core. Every expected user error is a subclass of :class:`CotuneError`.

The CLI prints ``str(error)`` as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CotuneError(Exception):
    """Base class for errors a user can act on."""


class SpecError(CotuneError):
    """A job spec or search-space file is malformed; the message names the file, line and field."""


class UnknownKernelError(CotuneError):
    """A spec names a kernel that is not in the registry."""


class StorageError(CotuneError):
    """The Optuna storage or MLflow tracking store cannot be opened."""


class NotFoundError(CotuneError):
    """A job, study or export entry that was asked for does not exist."""
