"""Storage error classes and the one retry rule."""

import threading

import pytest

from iotstream.clickhouse import StorageError
from iotstream.common.retry import Interrupted, retry


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        (
            "Code: 252. DB::Exception: Too many parts (300). Merges are processing significantly slower than "
            "inserts."
            " (TOO_MANY_PARTS)",
            True,
        ),
        ("Code: 209. DB::NetException: Timeout exceeded while reading from socket (SOCKET_TIMEOUT)", True),
        ("Code: 60. DB::Exception: Table iotstream.readings does not exist. (UNKNOWN_TABLE)", False),
        ("Code: 53. DB::Exception: Type mismatch in IN or VALUES section. (TYPE_MISMATCH)", False),
        ("Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE)", False),
        ("Code: 164. DB::Exception: Cannot execute query in readonly mode. (READONLY)", False),
        ("something without a code", False),
    ],
)
def test_classified_by_clickhouse_code(message, transient):
    assert StorageError(message).transient is transient


def test_a_connection_failure_is_transient_whatever_the_text():
    assert StorageError("HTTPConnectionPool: Max retries exceeded", transient=True).transient


class Calls:
    def __init__(self, errors):
        self.errors, self.n = list(errors), 0

    def __call__(self):
        self.n += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def is_transient(exc):
    return isinstance(exc, StorageError) and exc.transient


def test_transient_errors_are_retried_until_success():
    fn = Calls([StorageError("Code: 252. x"), StorageError("Code: 209. y")])
    assert retry(fn, "t", is_transient, threading.Event(), delays=(0, 0, 0)) == "done"
    assert fn.n == 3


def test_retries_are_bounded():
    fn = Calls([StorageError("Code: 252. x")] * 5)
    with pytest.raises(StorageError):
        retry(fn, "t", is_transient, threading.Event(), delays=(0, 0))
    assert fn.n == 3


def test_a_permanent_error_is_not_retried():
    fn = Calls([StorageError("Code: 60. no table")])
    with pytest.raises(StorageError):
        retry(fn, "t", is_transient, threading.Event(), delays=(0, 0))
    assert fn.n == 1


def test_stop_interrupts_the_wait():
    stop = threading.Event()
    stop.set()
    with pytest.raises(Interrupted):
        retry(Calls([StorageError("Code: 252. x")]), "t", is_transient, stop, delays=(3600,))
