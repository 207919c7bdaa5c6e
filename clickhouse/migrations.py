"""Schema: the numbered migration files (schema/*.sql), applied once each, and the tables' retention."""

from __future__ import annotations

import re
from importlib import resources

from .tables import Tables

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS $db.schema_migrations (name String, applied DateTime DEFAULT now())
ENGINE = MergeTree ORDER BY name
"""

# table -> (TTL time expression, StoreConfig field with its days); see Store.apply_retention
RETENTION = {
    "readings": ("toDateTime(time)", "retention_days"),
    "anomalies": ("toDateTime(time)", "retention_days"),
    "rollup_1m": ("bucket", "retention_days"),
    "rollup_1h": ("bucket", "long_retention_days"),
    "rollup_1d": ("bucket", "long_retention_days"),
    "anomaly_episodes": ("toDateTime(updated)", "long_retention_days"),
}
# Statements that run after a migration file is applied, to fill what it created from stored data.
AFTER_MIGRATION = {"007_anomaly_episodes.sql": "rebuild_episodes"}
_TTL_DAYS = re.compile(r"\bTTL\b.*?toIntervalDay\((\d+)\)", re.S)


def schema_files() -> list[tuple[str, str]]:
    folder = resources.files("iotstream.clickhouse") / "schema"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name, p.read_text()) for p in files]


def split_statements(text: str) -> list[str]:
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class Schema(Tables):
    def migrate(self) -> list[str]:
        """Apply the numbered schema files not applied yet; returns their names. On a cluster, create the
        Replicated/Distributed schema generated from the same files (clickhouse.cluster) instead."""
        if self.backend.cluster:
            from .cluster import cluster_schema

            for statement in cluster_schema(self.db, self.backend.cluster, self.config):
                self.backend.command(statement)
            return []
        self._command(MIGRATIONS_TABLE)
        done = set(self._query("SELECT name FROM $db.schema_migrations").column("name").to_pylist())
        applied = []
        for name, text in schema_files():
            if name in done:
                continue
            for statement in split_statements(text):
                self._command(statement)
            if name in AFTER_MIGRATION:
                getattr(self, AFTER_MIGRATION[name])()
            self._command("INSERT INTO $db.schema_migrations (name) VALUES ({n:String})", {"n": name})
            applied.append(name)
        self.apply_retention()
        return applied

    def apply_retention(self) -> list[str]:
        """Bring each table's TTL to the configured days; returns the tables changed. Rows already stored
        past a shorter limit go at the next merge rather than in a rewrite of every part now."""
        rows = self._query(
            "SELECT name, create_table_query AS ddl FROM system.tables WHERE database = {d:String}",
            {"d": self.db},
        ).to_pylist()
        changed = []
        for row in rows:
            if row["name"] not in RETENTION:
                continue
            expr, field = RETENTION[row["name"]]
            days = int(getattr(self.config, field))
            found = _TTL_DAYS.search(row["ddl"])
            if found and int(found.group(1)) == days:
                continue
            self._command(
                f"ALTER TABLE $db.{row['name']} MODIFY TTL {expr} + INTERVAL {days} DAY "
                "SETTINGS materialize_ttl_after_modify = 0"
            )
            changed.append(row["name"])
        return changed
