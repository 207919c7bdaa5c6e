"""Human output of `iotstream query`: alignment, sparklines, bars and the subcommand renderers."""

from iotstream.cli import render
from iotstream.v1 import query_pb2 as pb

NOW = 1_800_000_000_000


def test_table_aligns_text_left_and_numbers_right():
    out = render.table(["NAME", "N"], [["a", 5], ["longer", 12345]]).splitlines()
    assert out == ["NAME         N", "a            5", "longer  12,345"]


def test_sparkline_scales_to_the_range_and_fits_the_width():
    assert render.sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert render.sparkline([5, 5, 5]) == "▁▁▁"
    long = render.sparkline(list(range(1000)), width=40)
    assert len(long) == 40 and long[0] == "▁" and long[-1] == "█" and list(long) == sorted(long)
    assert render.sparkline([float("nan")]) == ""


def test_bar_and_age():
    assert render.bar(0.5, 1.0, 10) == "█████·····"
    assert render.bar(3, 0) == "·" * render.BAR_WIDTH
    assert render.when(NOW - 90_000, NOW).endswith("(1m ago)")
    assert render.when(0, NOW) == "-"


def test_aggregate_prints_only_filled_functions():
    reply = pb.AggregateResponse(
        sources=["rollup_1m"],
        series=[
            pb.AggregateSeries(
                device_id="d1",
                metric="temp",
                bucket_start_ms=[NOW, NOW + 60_000],
                p95=[1.5, 2.5],
                count=[3, 4],
            )
        ],
    )
    lines = render.aggregate(reply, NOW).splitlines()
    assert lines[0] == "d1 / temp  count ▁█"
    assert lines[1].split() == ["BUCKET", "(UTC)", "COUNT", "P95"]
    assert lines[2].split()[-2:] == ["3", "1.5"] and lines[3].split()[-2:] == ["4", "2.5"]
    assert lines[-1] == "read from: rollup_1m"


def test_anomalies_table_and_paging_hint():
    reply = pb.ListAnomaliesResponse(
        next_page_token="tok",
        anomalies=[
            pb.Anomaly(
                device_id="d1",
                metric="temp",
                kind="zscore",
                severity=pb.SEVERITY_HIGH,
                state=pb.ANOMALY_OPEN,
                opened_ms=NOW - 5_000,
                readings=2,
                value=9.5,
                score=0.8,
                id="ID1",
                acknowledged_by="alice",
            )
        ],
    )
    lines = render.anomalies(reply, NOW).splitlines()
    assert lines[0].split()[:4] == ["OPENED", "DEVICE", "METRIC", "KIND"]
    assert "(5s ago)  d1      temp    zscore  high      open" in lines[1] and "████████·· 0.80" in lines[1]
    assert lines[1].endswith("alice     ID1")
    assert lines[-1] == "more: --page-token tok"


def test_watch_event_line():
    e = pb.AnomalyEvent(
        type=pb.AnomalyEvent.CLOSED,
        anomaly=pb.Anomaly(
            device_id="d1",
            metric="temp",
            kind="stuck",
            severity=pb.SEVERITY_LOW,
            updated_ms=NOW,
            value=1.0,
            score=0.55,
            readings=7,
        ),
    )
    assert render.event(e, NOW).endswith("closed   d1  temp  stuck  low  peak 1 score 0.55  7 readings")
