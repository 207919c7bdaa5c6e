"""Every query of the Grafana dashboards in docs/grafana/dashboards, with Grafana's template variables and
the grafana-clickhouse-datasource macros expanded as the plugin expands them (pkg/macros/macros.go), run on
the embedded engine over a simulated fleet: each returns rows with the columns its panel reads."""

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
from waiting import poll

from iotstream.client.simulate import METRICS, run_fleet
from iotstream.v1 import query_pb2 as qpb

DASHBOARDS = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "dashboards"
DEVICES, READINGS = 4, 900  # 300 time points of 3 metrics, 1 s apart: five 1-minute buckets per series
INTERVAL_S = 60  # the panel interval Grafana would pick for a 1 h range on a ~60-point-wide panel

# Columns each query must return, by (dashboard uid, panel id): what the panel's fields and table columns
# name. Written here rather than read from the JSON, so a changed query cannot quietly change the oracle.
COLUMNS = {
    ("iotstream-fleet", 1): ["devices"],
    ("iotstream-fleet", 2): ["online"],
    ("iotstream-fleet", 3): ["silent"],
    ("iotstream-fleet", 4): ["open"],
    ("iotstream-fleet", 5): ["readings"],
    ("iotstream-fleet", 6): ["time", "readings_per_s"],
    ("iotstream-fleet", 7): ["time", "metric", "avg"],
    ("iotstream-fleet", 8): ["device_id", "stored", "last_reading", "readings", "metrics", "status"],
    ("iotstream-device", 1): ["metric", "value", "time", "readings"],
    ("iotstream-device", 2): ["episodes", "open"],
    ("iotstream-device", 3): ["time", "avg", "min", "max"],
    ("iotstream-device", 4): ["time", "value"],
    ("iotstream-device", 5): ["time", "metric", "kind", "value", "score", "zscore"],
    ("iotstream-device", "annotation"): ["time", "timeEnd", "text", "tags"],
    ("iotstream-device", "device"): ["device_id"],
    ("iotstream-device", "metric"): ["metric"],
    ("iotstream-anomalies", 1): ["severity", "open"],
    ("iotstream-anomalies", 2): ["time", "kind", "episodes"],
    ("iotstream-anomalies", 3): ["t", "metric", "flagged"],
    ("iotstream-anomalies", 4): ["device_id", "episodes"],
    ("iotstream-anomalies", 5): [
        "opened",
        "device_id",
        "metric",
        "kind",
        "severity",
        "state",
        "readings",
        "peak_value",
        "peak_score",
        "updated",
        "acknowledged_by",
    ],
}


def expand_macros(sql: str, from_ms: int, to_ms: int, interval_s: int) -> str:
    """The plugin's macros, as its Go code writes them."""

    def seconds(ms):
        return f"toDateTime({ms // 1000})"

    def millis(ms):
        return f"fromUnixTimestamp64Milli({ms})"

    with_arg = {
        "timeFilter": lambda c: f"{c} >= {seconds(from_ms)} AND {c} <= {seconds(to_ms)}",
        "timeFilter_ms": lambda c: f"{c} >= {millis(from_ms)} AND {c} <= {millis(to_ms)}",
        "timeInterval": lambda c: f"toStartOfInterval(toDateTime({c}), INTERVAL {interval_s} second)",
    }
    sql = re.sub(
        r"\$__(timeFilter_ms|timeFilter|timeInterval)\(([^)]*)\)",
        lambda m: with_arg[m.group(1)](m.group(2).strip()),
        sql,
    )
    plain = {
        "fromTime": seconds(from_ms),
        "toTime": seconds(to_ms),
        "fromTime_ms": millis(from_ms),
        "toTime_ms": millis(to_ms),
        "interval_s": str(interval_s),
    }
    sql = re.sub(
        r"\$__(fromTime_ms|toTime_ms|fromTime|toTime|interval_s)\b", lambda m: plain[m.group(1)], sql
    )
    assert "$__" not in sql, f"a macro this test does not know: {sql}"
    return sql


def interpolate(sql: str, variables: dict[str, str]) -> str:
    """Grafana's template variables: ${name} raw, ${name:singlequote} quoted (single values here)."""

    def one(m):
        value = variables[m.group(1)]
        return "'" + value.replace("'", "\\'") + "'" if m.group(2) == "singlequote" else value

    return re.sub(r"\$\{(\w+)(?::(\w+))?\}", one, sql)


def queries():
    """(dashboard uid, panel id or variable name, panel type, SQL) of every query in every dashboard."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                out.append((board["uid"], panel["id"], panel["type"], target["rawSql"]))
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                out.append((board["uid"], var["name"], "variable", var["query"]))
        for note in board["annotations"]["list"]:
            if "target" in note:
                out.append((board["uid"], "annotation", "annotation", note["target"]["rawSql"]))
    return out


def test_every_dashboard_query_has_its_columns_listed():
    found = {(uid, pid) for uid, pid, _, _ in queries()}
    assert found == set(COLUMNS)
    for path in DASHBOARDS.glob("*.json"):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            assert panel["datasource"]["type"] == "grafana-clickhouse-datasource"


@pytest.fixture(scope="module")
def fleet(chdb_dir):
    import uuid

    from conftest import ServerThread

    from iotstream.node import Config

    srv = ServerThread(Config(port=0, data_dir=chdb_dir, database="t_" + uuid.uuid4().hex[:12]))
    try:
        summary, data = asyncio.run(
            run_fleet(srv.target, DEVICES, READINGS, batch=60, anomalies=0.01, seed=11)
        )
        assert summary["acked"] == DEVICES * READINGS
        poll(
            lambda: srv.query.GetStats(qpb.GetStatsRequest(), timeout=10).readings >= DEVICES * READINGS,
            60,
            "the fleet's readings in the store",
        )
        episodes = srv.query.ListAnomalies(qpb.ListAnomaliesRequest(), timeout=10).anomalies
        assert episodes, "the simulated spikes opened no episode"
        srv.query.AcknowledgeAnomaly(
            qpb.AcknowledgeAnomalyRequest(id=episodes[0].id, by="grafana-test"), timeout=10
        )
        yield srv, data
    finally:
        srv.stop()


def run(srv, data, sql):
    now = time.time_ns() // 1_000_000
    variables = {"db": srv.config.database, "device": data[0].device_id, "metric": METRICS[0]}
    return srv.sql(expand_macros(interpolate(sql, variables), now - 3_600_000, now + 1000, INTERVAL_S))


@pytest.mark.parametrize(
    "uid,pid,kind,sql", queries(), ids=lambda v: str(v) if not isinstance(v, str) or len(v) < 40 else "sql"
)
def test_query_returns_rows_with_its_columns(fleet, uid, pid, kind, sql):
    srv, data = fleet
    rows = run(srv, data, sql)
    assert rows, f"{uid} panel {pid}: no rows"
    assert list(rows[0]) == COLUMNS[(uid, pid)]
    if kind in ("timeseries", "annotation"):  # Grafana needs a time column first and a number to plot
        types = [r["type"] for r in run(srv, data, f"DESCRIBE TABLE ({sql})")]
        assert types[0].startswith("DateTime"), types
        assert any(re.match(r"(Nullable\()?(U?Int|Float)", t) for t in types[1:]) or kind == "annotation", (
            types
        )


def panel_sql(uid, pid):
    return next(sql for u, p, _, sql in queries() if (u, p) == (uid, pid))


def test_fleet_figures_match_the_simulator(fleet):
    """Independent oracle: what the simulator sent."""
    srv, data = fleet
    assert run(srv, data, panel_sql("iotstream-fleet", 1)) == [{"devices": DEVICES}]
    assert run(srv, data, panel_sql("iotstream-fleet", 2)) == [{"online": DEVICES}]
    assert run(srv, data, panel_sql("iotstream-fleet", 5)) == [{"readings": DEVICES * READINGS}]
    rate = run(srv, data, panel_sql("iotstream-fleet", 6))
    assert round(sum(r["readings_per_s"] for r in rate) * 60) == DEVICES * READINGS
    table = run(srv, data, panel_sql("iotstream-fleet", 8))
    assert sorted(r["device_id"] for r in table) == sorted(d.device_id for d in data)
    assert all(r["readings"] == READINGS and r["status"] == "online" for r in table)


def test_device_panels_match_the_simulator(fleet):
    srv, data = fleet
    d = data[0]
    mine = d.metric == 0
    raw = run(srv, data, panel_sql("iotstream-device", 4))
    assert [r["value"] for r in raw] == list(d.values[mine])
    rolled = run(srv, data, panel_sql("iotstream-device", 3))
    assert min(r["min"] for r in rolled) == d.values[mine].min()
    assert max(r["max"] for r in rolled) == d.values[mine].max()
    latest = {r["metric"]: r["value"] for r in run(srv, data, panel_sql("iotstream-device", 1))}
    assert latest == {m: d.values[d.metric == i][-1] for i, m in enumerate(METRICS)}


def test_episodes_table_shows_the_acknowledgement(fleet):
    srv, data = fleet
    rows = run(srv, data, panel_sql("iotstream-anomalies", 5))
    assert sum(r["acknowledged_by"] == "grafana-test" for r in rows) == 1
    listed = srv.query.ListAnomalies(qpb.ListAnomaliesRequest(page_size=1000), timeout=10).anomalies
    assert len(rows) == len(listed)
