"""The token registry's table: hashes of bearer tokens and whom they name (auth decides what they allow).

Revoking writes a newer row version; reads use FINAL. Created on first use, so ingest nodes, query nodes
and the CLI share one registry in the node's database.
"""

from __future__ import annotations

import time

from .backend import Backend

AUTH_TABLE = """
CREATE TABLE IF NOT EXISTS $db.auth_tokens
(
    token_sha256 String,
    role LowCardinality(String),
    subject String,
    created DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC'),
    revoked UInt8 DEFAULT 0,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY token_sha256
"""


class TokenTable:
    def __init__(self, backend: Backend):
        self.backend = backend
        self.name = f"{backend.database}.auth_tokens"
        backend.command(AUTH_TABLE.replace("$db", backend.database))

    def write(self, token_sha256: str, role: str, subject: str, revoked: bool = False) -> None:
        self.backend.command(
            f"INSERT INTO {self.name} (token_sha256, role, subject, revoked, version) "
            "VALUES ({h:String}, {role:String}, {subject:String}, {revoked:UInt8}, {v:UInt64})",
            {
                "h": token_sha256,
                "role": role,
                "subject": subject,
                "revoked": int(revoked),
                "v": time.time_ns(),
            },
        )

    def live(self) -> list[dict]:
        """Tokens not revoked: token_sha256, role, subject, created_ms; by role and subject."""
        return self.backend.query(
            f"SELECT token_sha256, role, subject, toUnixTimestamp64Milli(created) AS created_ms "
            f"FROM {self.name} FINAL WHERE revoked = 0 ORDER BY role, subject"
        ).to_pylist()
