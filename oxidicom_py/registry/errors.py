"""What can go wrong registering a row: the exceptions a row's future carries, and how a
database error is told apart (retry the same rows, or split the batch to isolate a bad one)."""

from __future__ import annotations

import psycopg


class RegistrarError(Exception):
    """Base class of the exceptions a row's future can carry."""


class RowRejectedError(RegistrarError):
    """The database refused this row even after fitting and isolating it."""


class RegistrarClosedError(RegistrarError):
    """``close()`` ran out of time before this row's batch committed (outcome unknown)."""


def is_data_error(error: BaseException) -> bool:
    """Whether retrying the same rows cannot help (split them instead).

    Data errors: the server refused a value (``DataError``, ``IntegrityError``), or psycopg
    could not send one (client-side errors carry no SQLSTATE; non-psycopg exceptions such as
    ``UnicodeEncodeError`` or ``TypeError`` come from dumping). Everything else -- lost
    connections, pool timeouts, server shutdown, missing tables -- may heal, so it is retried.
    """
    if isinstance(error, psycopg.DataError | psycopg.IntegrityError):
        return True
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError | OSError):
        return False
    if isinstance(error, psycopg.Error):
        return error.sqlstate is None
    return True


def describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
