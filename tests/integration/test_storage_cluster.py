"""The cluster schema is generated from the same migrations as the single node: the same tables with the
same columns, each as a replicated local table plus a Distributed table sharded by device, and views that
work on the local tables. Checked by parsing every statement with ClickHouse's own parser (no cluster
here)."""

import re
import uuid

import pytest

from iotstream.clickhouse import Store, open_backend
from iotstream.clickhouse.cluster import cluster_schema, main
from iotstream.clickhouse.store import StoreConfig


@pytest.fixture(scope="module")
def schema(chdb_dir):
    open_backend(
        data_dir=chdb_dir, database="t_cluster_anchor"
    )  # the engine of this process is on chdb_dir already
    return cluster_schema("telemetry", "main", StoreConfig(retention_days=20, long_retention_days=400))


@pytest.fixture(scope="module")
def single(chdb_dir):
    s = Store(open_backend(data_dir=chdb_dir, database="t_single_" + uuid.uuid4().hex[:8]))
    s.migrate()
    rows = s.backend.query(
        "SELECT name, engine FROM system.tables WHERE database = {d:String}", {"d": s.db}
    ).to_pylist()
    columns = s.backend.query(
        "SELECT table, name, type FROM system.columns WHERE database = {d:String} ORDER BY table, position",
        {"d": s.db},
    ).to_pylist()
    return s, rows, columns


def test_every_table_is_replicated_and_distributed(schema, single):
    store, rows, _ = single
    tables = {r["name"] for r in rows if r["engine"].endswith("MergeTree")} - {"schema_migrations"}
    views = {r["name"] for r in rows if r["engine"] == "MaterializedView"}
    local = {
        m.group(1): s
        for s in schema
        if (m := re.match(r"CREATE TABLE IF NOT EXISTS telemetry\.(\w+)_local ", s))
    }
    dist = {
        m.group(1): s
        for s in schema
        if (m := re.match(r"CREATE TABLE IF NOT EXISTS telemetry\.(\w+) ON CLUSTER main AS", s))
    }
    mvs = {
        m.group(1): s
        for s in schema
        if (m := re.match(r"CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry\.(\w+) ", s))
    }
    assert set(local) == set(dist) == tables and set(mvs) == views
    for name, ddl in local.items():
        assert re.search(
            rf"ENGINE = Replicated\w*MergeTree\('/clickhouse/tables/{{shard}}/telemetry/{name}_local', "
            r"'\{replica\}'",
            ddl,
        )
        assert "non_replicated_deduplication_window" not in ddl and "schema_gen_" not in ddl
    assert (
        "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/telemetry/anomaly_episodes_local', "
        "'{replica}', version, deleted)" in local["anomaly_episodes"]
    )
    assert "toIntervalDay(20)" in local["readings"] and "toIntervalDay(400)" in local["rollup_1h"]
    for name, ddl in dist.items():
        assert ddl.endswith(f"ENGINE = Distributed(main, telemetry, {name}_local, cityHash64(device_id))")
    for ddl in mvs.values():  # views read and write local tables only
        refs = re.findall(r"telemetry\.(\w+)", ddl)[1:]
        assert refs and all(r.endswith("_local") for r in refs), ddl


def test_columns_match_the_single_node(schema, single):
    store, _, columns = single
    by_table = {}
    for c in columns:
        by_table.setdefault(c["table"], []).append(f"`{c['name']}` {c['type']}")
    for ddl in schema:
        m = re.match(r"CREATE TABLE IF NOT EXISTS telemetry\.(\w+)_local ", ddl)
        if m:
            for col in by_table[m.group(1)]:
                assert col in ddl, (m.group(1), col)


def test_every_statement_parses(schema, single):
    store = single[0]
    for ddl in schema:
        formatted = (
            store.backend.query("SELECT formatQuery({q:String}) AS f", {"q": ddl}).column("f")[0].as_py()
        )
        assert formatted.startswith("CREATE")


def test_cli_prints_it(schema, capsys):
    assert (
        main(
            [
                "--cluster",
                "main",
                "--database",
                "telemetry",
                "--retention-days",
                "20",
                "--long-retention-days",
                "400",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == "".join(s + ";\n\n" for s in schema)


def test_url_names_the_cluster():
    with pytest.raises(ValueError):
        open_backend(clickhouse_url="http://localhost:1/iotstream?cluster=bad;name")
