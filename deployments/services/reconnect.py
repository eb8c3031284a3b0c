"""Surviving a database restart in the middle of a task: reconnect once and write again.

Django keeps a broken connection until the next request (or task) starts; a worker in the middle of
a deploy would otherwise fail every write after a PostgreSQL restart and lose its attempt to the
sweeper. The writes wrapped here are idempotent or harmless to repeat (a timeline event, a
conditional UPDATE), and nothing is retried inside a transaction.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def reconnecting(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function``; if the database connection was lost, open a new one and run it once more."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except (OperationalError, InterfaceError):
            if connection.in_atomic_block:
                raise  # the transaction is gone with the connection: its owner must decide
            logger.warning("database connection lost in %s; reconnecting once", function.__qualname__)
            connection.close()
            return function(*args, **kwargs)

    return wrapper
