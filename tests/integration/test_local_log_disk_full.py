"""The local log on a full disk (a 2 MB tmpfs): appends are retried, then fail as UNAVAILABLE, and every
append that was acknowledged is on disk, whole and in order."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from iotstream.bus.local import LocalLog, QueueUnavailable


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
    )
    # CI and the developers' machines run as root; a machine that cannot mount fails here, loudly.
    assert mounted.returncode == 0, (
        f"cannot mount a 2 MB tmpfs (needs root): {mounted.stderr.decode().strip()}"
    )
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_is_unavailable_and_loses_nothing_acked(small_disk):
    log = LocalLog(str(small_disk / "log.sqlite"), unavailable_after_s=0.5)
    payloads = [bytes([i % 251]) * 50_000 for i in range(80)]  # 4 MB: twice the disk

    async def main():
        acked, refused = [], []
        for i, p in enumerate(payloads):
            try:
                await (await log.put(p, 1))
                acked.append(i)
            except QueueUnavailable as exc:
                refused.append(str(exc))
                break
        return acked, refused

    try:
        acked, refused = asyncio.run(main())
    finally:
        log.close()
        log.close_reader()
    assert refused and "cannot write" in refused[0] and "full" in refused[0]
    assert 0 < len(acked) < len(payloads)

    reopened = LocalLog(str(small_disk / "log.sqlite"))
    try:
        assert [r.value() for r in reopened.read(0, 1000, 0)] == [payloads[i] for i in acked]
        assert reopened.depth == len(acked)
    finally:
        reopened.close()
        reopened.close_reader()
