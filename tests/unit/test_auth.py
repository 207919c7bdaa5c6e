"""Tokens, registries and the role rules, without a server."""

import grpc
import pytest

from iotstream.auth import (
    ADMIN,
    DEVICE,
    READER,
    Authenticator,
    AuthError,
    FileTokens,
    Principal,
    authorize,
    new_token,
    token_hash,
)


def md(token):
    return (("authorization", f"Bearer {token}"),)


def test_tokens_are_random_and_only_hashes_are_stored(tmp_path):
    path = tmp_path / "tokens.jsonl"
    reg = FileTokens(path)
    tokens = [reg.add(DEVICE, f"d{i}") for i in range(20)]
    assert len(set(tokens)) == 20 and all(len(t) >= 40 for t in tokens)
    text = path.read_text()
    assert not any(t in text for t in tokens)
    assert all(token_hash(t) in text for t in tokens)
    assert (path.stat().st_mode & 0o777) == 0o600


def test_identify_and_revoke(tmp_path):
    reg = FileTokens(tmp_path / "t.jsonl")
    dev, reader = reg.add(DEVICE, "dev-1"), reg.add(READER, "dash")
    auth = Authenticator(reg)
    assert auth.identify(md(dev)) == Principal(DEVICE, "dev-1")
    assert auth.identify(md(reader)) == Principal(READER, "dash")
    assert reg.revoke(DEVICE, "dev-1") == 1 and reg.revoke(DEVICE, "dev-1") == 0
    auth.refresh()
    with pytest.raises(AuthError) as err:
        auth.identify(md(dev))
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert [r["subject"] for r in reg.list()] == ["dash"]


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer"),),
        (("authorization", "Basic abc"),),
        (("authorization", "Bearer " + new_token()),),
        (("x-token", "abc"),),
    ],
)
def test_bad_credentials_are_unauthenticated(tmp_path, metadata):
    auth = Authenticator(FileTokens(tmp_path / "none.jsonl"))
    with pytest.raises(AuthError) as err:
        auth.identify(metadata)
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "role,method,allowed",
    [
        (DEVICE, "/iotstream.v1.Ingest/Stream", True),
        (DEVICE, "/iotstream.v1.Query/GetStats", False),
        (READER, "/iotstream.v1.Ingest/Send", False),
        (READER, "/iotstream.v1.Query/GetHistory", True),
        (READER, "/iotstream.v1.Query/AcknowledgeAnomaly", False),
        (ADMIN, "/iotstream.v1.Query/AcknowledgeAnomaly", True),
        (ADMIN, "/iotstream.v1.Query/ListAnomalies", True),
        (ADMIN, "/iotstream.v1.Ingest/Send", False),
        (DEVICE, "/grpc.health.v1.Health/Check", True),
    ],
)
def test_roles(role, method, allowed):
    principal = Principal(role, "x")
    if allowed:
        authorize(principal, method)
    else:
        with pytest.raises(AuthError) as err:
            authorize(principal, method)
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_a_broken_line_in_the_tokens_file_is_skipped(tmp_path):
    path = tmp_path / "t.jsonl"
    reg = FileTokens(path)
    token = reg.add(DEVICE, "dev-1")
    with open(path, "a") as f:
        f.write("{not json\n")
    assert Authenticator(reg).identify(md(token)).subject == "dev-1"
