"""The embedded engine's statement order (clickhouse.backend.ReadsFirst): inserts wait for earlier reads."""

import threading

from iotstream.clickhouse.backend import ReadsFirst


def test_insert_waits_for_earlier_reads_only():
    gate = ReadsFirst()
    wrote = threading.Event()
    writer = threading.Thread(target=lambda: (gate.before_write(), wrote.set()))
    first, second = gate.read(), gate.read()
    first.__enter__()
    second.__enter__()  # two queries waiting or running
    writer.start()
    assert not wrote.wait(0.2)
    with gate.read():  # a query that came after the insert does not hold it back
        first.__exit__(None, None, None)
        assert not wrote.wait(0.2)
        second.__exit__(None, None, None)
        assert wrote.wait(30)
    writer.join()


def test_finished_reads_do_not_hold_an_insert():
    gate = ReadsFirst()
    with gate.read():
        pass
    wrote = threading.Event()
    writer = threading.Thread(target=lambda: (gate.before_write(), wrote.set()), daemon=True)
    writer.start()
    assert wrote.wait(30)
