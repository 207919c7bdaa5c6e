"""The per-device token bucket: pass, then hold back, then refuse with a retry delay."""

import pytest

from iotstream.ingest import DeviceLimiter, RateLimited, TokenBucket, TooManyStreams


def bucket(rate=100.0, burst=100.0, max_delay_s=2.0, reject_after_s=5.0):
    return TokenBucket(rate, burst, max_delay_s, reject_after_s, updated=0.0)


def test_within_burst_passes_then_holds_back_by_the_debt():
    b = bucket()
    assert b.take(60, 0.0) == 0.0
    assert b.take(40, 0.0) == 0.0
    assert b.take(50, 0.0) == pytest.approx(0.5)  # 50 readings of debt at 100/s
    assert b.take(50, 0.5) == pytest.approx(0.5)  # the 0.5 s paid the debt; the new 50 are new debt


def test_paced_sender_is_refused_only_after_reject_after_s():
    b, now = bucket(), 0.0
    b.take(100, now)
    delays = []
    while True:  # a device with an endless backlog that waits out each delay, as a held stream does
        try:
            delays.append(b.take(50, now))
        except RateLimited as exc:
            refused_at, retry = now, exc.retry_after_s
            break
        now += delays[-1]
    assert all(d == pytest.approx(0.5) for d in delays)
    assert refused_at == pytest.approx(5.0)  # reject_after_s of being held back without a break
    assert retry == pytest.approx(0.5)
    # Waiting out the retry delay passes: the stretch of throttling is over.
    assert b.take(50, refused_at + retry) == 0.0


def test_concurrent_debt_past_max_delay_is_refused_without_taking():
    b = bucket()
    b.take(100, 0.0)
    assert b.take(150, 0.0) == pytest.approx(1.5)
    with pytest.raises(RateLimited) as err:
        b.take(100, 0.0)  # 250 readings of debt would be 2.5 s > max_delay_s
    assert err.value.retry_after_s == pytest.approx(0.5)
    assert b.level == pytest.approx(-150)  # nothing taken for the refused batch


def test_refill_caps_at_burst():
    b = bucket()
    b.take(100, 0.0)
    assert b.take(100, 100.0) == 0.0  # long idle refills to the burst, not beyond
    assert b.take(1, 100.0) == pytest.approx(0.01)


def test_limiter_per_device_and_no_limit():
    clock = [0.0]
    lim = DeviceLimiter(rate=10, burst=10, clock=lambda: clock[0])
    assert lim.take("a", 10) == 0.0 and lim.take("b", 10) == 0.0
    assert lim.take("a", 5) == pytest.approx(0.5)
    assert DeviceLimiter().take("a", 10**9) == 0.0


def test_stream_cap_per_device():
    lim = DeviceLimiter(max_streams=2)
    lim.open_stream("a")
    lim.open_stream("a")
    lim.open_stream("b")
    with pytest.raises(TooManyStreams):
        lim.open_stream("a")
    lim.close_stream("a")
    lim.open_stream("a")
    assert lim.streams == {"a": 2, "b": 1}
