"""common.logs.Repeats: a repeated line passes once per window, and the next one counts what was held."""

import logging

from iotstream.common.logs import Repeats


def record(msg: str, at: float) -> logging.LogRecord:
    r = logging.LogRecord("iotstream.rdkafka", logging.ERROR, "", 0, msg, None, None)
    r.created = at
    return r


def test_a_repeated_line_passes_once_per_window_and_says_how_many_were_held_back():
    f = Repeats(window_s=10.0)
    passed = [r for r in (record("connect failed", 100.0 + i * 0.05) for i in range(100)) if f.filter(r)]
    assert len(passed) == 1
    later = record("connect failed", 110.5)
    assert f.filter(later)
    assert later.getMessage() == "connect failed (99 more like it held back)"
    assert f.filter(record("connect failed", 121.0))  # nothing held back since: the line as it was
    assert not f.filter(record("connect failed", 121.5))


def test_different_lines_do_not_hold_each_other_back_and_memory_stays_bounded():
    f = Repeats(window_s=10.0, remember=8)
    assert all(f.filter(record(f"line {i}", 100.0)) for i in range(50))
    assert len(f.seen) <= 8
    assert not f.filter(record("line 49", 101.0))  # still remembered
    assert f.filter(record("line 0", 101.0))  # forgotten when memory filled: let through once again
