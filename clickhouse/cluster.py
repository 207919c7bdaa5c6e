"""The schema for a ClickHouse cluster, generated from the same numbered migrations as the single node.

The migrations are applied to a scratch database of the embedded engine and the resulting CREATE
statements rewritten: every MergeTree-family table T becomes T_local, a Replicated*MergeTree (one replica
set per shard), plus T, a Distributed table over T_local sharded by cityHash64(device_id); every
materialized view reads and writes the _local tables on each node. All rows of a device land on one shard,
so rollups, the device registry and anomaly episodes are complete per shard, and the Store's SQL, which
names T, runs unchanged.

    python -m iotstream.clickhouse.cluster --cluster main [--database iotstream] > cluster.sql

Store.migrate applies it by itself when the backend URL says `?cluster=NAME`.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import tempfile
import uuid

from . import backend as backend_module
from .store import Store, StoreConfig

SHARDING_KEY = "cityHash64(device_id)"
SKIP = {"schema_migrations"}  # the cluster schema is applied whole, not file by file
_MERGE_TREE = re.compile(r"ENGINE = (\w*)MergeTree(?:\(([^)]*)\))?")


def scratch_tables(config: StoreConfig) -> tuple[str, list[dict]]:
    """(scratch database name, its tables and views as system.tables rows) after every migration."""
    path = backend_module.ENGINE_PATH or tempfile.mkdtemp(prefix="iotstream-schema-")  # one path per process
    scratch = "schema_gen_" + uuid.uuid4().hex[:12]
    store = Store(backend_module.open_backend(data_dir=path, database=scratch), config)
    try:
        store.migrate()
        rows = store.backend.query(
            "SELECT name, engine, create_table_query AS ddl FROM system.tables "
            "WHERE database = {d:String} ORDER BY name",
            {"d": scratch},
        ).to_pylist()
    finally:
        store.backend.command(f"DROP DATABASE IF EXISTS {scratch}")
        store.backend.close()
    return scratch, [r for r in rows if r["name"] not in SKIP]


def cluster_schema(database: str, cluster: str, config: StoreConfig | None = None) -> list[str]:
    """CREATE statements, in order: replicated local tables, distributed tables, materialized views."""
    for what, value in (("database", database), ("cluster", cluster)):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"bad {what} name {value!r}")
    scratch, rows = scratch_tables(config or StoreConfig())
    tables = [r for r in rows if r["engine"].endswith("MergeTree")]
    views = [r for r in rows if r["engine"] == "MaterializedView"]
    local, distributed, mvs = [], [], []
    for r in tables:
        name = str(r["name"])
        ddl = str(r["ddl"]).replace(
            f"CREATE TABLE {scratch}.{name} ",
            f"CREATE TABLE IF NOT EXISTS {database}.{name}_local ON CLUSTER {cluster} ",
            1,
        )
        ddl = _MERGE_TREE.sub(functools.partial(_replicated, database=database, name=name), ddl, count=1)
        ddl = re.sub(r"non_replicated_deduplication_window = \d+, ", "", ddl)  # replicas deduplicate anyway
        local.append(ddl.replace(f"{scratch}.", f"{database}."))
        distributed.append(
            f"CREATE TABLE IF NOT EXISTS {database}.{name} ON CLUSTER {cluster} AS "
            f"{database}.{name}_local ENGINE = Distributed({cluster}, {database}, {name}_local, "
            f"{SHARDING_KEY})"
        )
    table_names = {r["name"] for r in tables}

    def to_local(
        m: re.Match[str],
    ) -> str:  # views act on each node's own inserts: from and to the _local tables
        return f"{database}.{m.group(1)}_local" if m.group(1) in table_names else f"{database}.{m.group(1)}"

    for r in views:
        ddl = str(r["ddl"]).replace(
            f"CREATE MATERIALIZED VIEW {scratch}.{r['name']} ",
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{r['name']} ON CLUSTER {cluster} ",
            1,
        )
        mvs.append(re.sub(rf"\b{scratch}\.(\w+)\b", to_local, ddl))
    return local + distributed + mvs


def _replicated(match: re.Match, database: str, name: str) -> str:
    args = [f"'/clickhouse/tables/{{shard}}/{database}/{name}_local'", "'{replica}'"]
    if match.group(2):
        args.append(match.group(2))
    return f"ENGINE = Replicated{match.group(1)}MergeTree({', '.join(args)})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Print the cluster schema (Replicated + Distributed tables).")
    p.add_argument("--cluster", required=True, help="cluster name from the servers' remote_servers")
    p.add_argument("--database", default="iotstream", help="database (default iotstream)")
    p.add_argument("--retention-days", type=int, default=StoreConfig.retention_days)
    p.add_argument("--long-retention-days", type=int, default=StoreConfig.long_retention_days)
    args = p.parse_args(argv)
    config = StoreConfig(retention_days=args.retention_days, long_retention_days=args.long_retention_days)
    for statement in cluster_schema(args.database, args.cluster, config):
        print(statement + ";\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
