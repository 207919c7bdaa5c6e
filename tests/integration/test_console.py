"""The console page in a real browser (Debian's headless Chromium, driven by Selenium over chromedriver)
against a server fed by the simulator over real gRPC; its JSON endpoints and tokens over plain HTTP.

Needs `chromium` and `chromium-driver` (apt) and `selenium` (the test extra); see docs/operator.md."""

import asyncio
import json
import shutil
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import ServerThread
from waiting import poll

from iotstream.auth import ClickHouseTokens
from iotstream.client.simulate import METRICS, run_fleet
from iotstream.node import Config
from iotstream.v1 import query_pb2 as qpb

DEVICES, READINGS = 5, 1800  # 10 minutes of 3 metrics at 1 s
SCREENSHOT = Path(__file__).resolve().parents[2] / "bench" / "results" / "console.png"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def now_ms():
    return time.time_ns() // 1_000_000


@pytest.fixture(scope="module")
def fed(chdb_dir):
    srv = ServerThread(Config(port=0, data_dir=chdb_dir, database="t_" + uuid.uuid4().hex[:12], http_port=0))
    try:
        summary, data = asyncio.run(
            run_fleet(srv.target, DEVICES, READINGS, batch=100, anomalies=0.003, seed=7)
        )
        assert summary["acked"] == DEVICES * READINGS
        poll(
            lambda: srv.query.GetStats(qpb.GetStatsRequest(), timeout=10).readings >= DEVICES * READINGS,
            60,
            "readings in the store",
        )
        srv.http = f"http://127.0.0.1:{srv.server.console.port}"
        yield srv, data
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM and CHROMEDRIVER, "install the browser: apt-get install -y chromium chromium-driver"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1600,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def until(driver, script: str, what: str, timeout: float = 30):
    """Poll a JavaScript expression in the page until it is truthy (WebDriverWait)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.execute_script("return " + script), f"page never showed {what}"
    )


def get(url: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_page_shows_fleet_charts_and_live_feed(fed, browser):
    srv, data = fed
    browser.get(srv.http + "/")
    ids = until(
        browser,
        f"document.querySelectorAll('#devices tr').length === {DEVICES} && "
        "[...document.querySelectorAll('#devices tr')].map(r => r.dataset.device)",
        "the devices",
    )
    assert ids == sorted(d.device_id for d in data)
    assert browser.find_element("id", "stat-devices").text == str(DEVICES)
    assert browser.find_element("id", "stat-online").text == str(DEVICES)
    charts = until(
        browser,
        f"document.querySelectorAll('.chart canvas').length === {len(METRICS)} && "
        "[...document.querySelectorAll('.chart')].map(c => c.dataset)",
        "a chart per metric",
    )
    assert sorted(c["metric"] for c in charts) == sorted(METRICS)
    # 10 minutes of readings in the default 1 h view: 30 s buckets, read from raw readings at that width.
    assert all(19 <= int(c["points"]) <= 22 and c["sources"] == "readings" for c in charts)
    first = data[0].device_id
    listed = srv.query.ListAnomalies(
        qpb.ListAnomaliesRequest(device_id=first, start_ms=now_ms() - 3_600_000, page_size=1000), timeout=10
    ).anomalies
    assert sum(int(c["anomalies"]) for c in charts) == len(listed) > 0  # every episode is marked
    # A wider view reads a rollup: 6 h at <= 300 points is 5-minute buckets, from rollup_1m.
    browser.find_element("css selector", "#ranges button[data-range='21600000']").click()
    sources = until(
        browser,
        "[...document.querySelectorAll('.chart')].every(c => c.dataset.sources === 'rollup_1m')"
        " && [...document.querySelectorAll('.chart')].map(c => c.dataset.points)",
        "the 6 h view",
    )
    assert all(1 <= int(p) <= 4 for p in sources)
    browser.find_element("css selector", "#ranges button[data-range='3600000']").click()
    until(browser, "document.getElementById('feed-status').textContent === 'live'", "the live feed")
    srv.server.store.insert_anomalies(
        pa.table(
            {
                "device_id": [first],
                "metric": ["pressure"],
                "time": pa.array([now_ms()], pa.timestamp("ms", tz="UTC")),
                "value": [1100.0],
                "kind": ["threshold"],
                "score": [0.9],
                "zscore": [40.0],
            }
        )
    )
    item = until(
        browser,
        f"[...document.querySelectorAll('#feed li')].find(li => li.dataset.device === '{first}')"
        " ?.textContent",
        "the new anomaly in the feed",
    )
    assert "opened" in item and "pressure" in item and "threshold" in item and "high" in item
    until(browser, "document.querySelectorAll('.chart canvas').length === 3", "the charts again")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT)) and SCREENSHOT.stat().st_size > 10_000
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    browser.get("about:blank")  # the page's live feed ends with it


def test_endpoints_answer_as_the_rpcs_do(fed):
    srv, data = fed
    status, stats = get(srv.http + "/api/stats")
    assert status == 200 and int(stats["readings"]) == DEVICES * READINGS
    status, page = get(srv.http + "/api/devices?limit=2")
    assert status == 200 and len(page["devices"]) == 2 and page["next_page_token"]
    status, rest = get(srv.http + "/api/devices?limit=10&page_token=" + page["next_page_token"])
    assert [d["device_id"] for d in page["devices"] + rest["devices"]] == sorted(d.device_id for d in data)
    status, agg = get(
        srv.http + f"/api/aggregate?device={data[0].device_id}&metric=temperature&func=count"
        f"&interval_ms=60000&start_ms={now_ms() - 3_600_000}"
    )
    assert status == 200 and sum(int(c) for c in agg["series"][0]["count"]) == READINGS // 3
    assert agg["sources"] == ["rollup_1m", "readings"] or agg["sources"][0].startswith(("rollup", "readings"))
    assert get(srv.http + "/api/devices?status=sideways")[0] == 400
    assert get(srv.http + "/api/aggregate?interval_ms=5")[0] == 400  # the RPC's own check
    assert get(srv.http + "/api/device/nobody")[0] == 404
    assert get(srv.http + "/api/nothing")[0] == 404
    assert get(srv.http + "/static/..%2f..%2fsetup.py")[0] == 404
    with urllib.request.urlopen(srv.http + "/static/uplot/LICENSE", timeout=10) as reply:
        assert b"MIT" in reply.read()


def test_events_resume_from_the_last_id(fed):
    srv, data = fed
    with urllib.request.urlopen(srv.http + "/api/events", timeout=30) as stream:
        block = read_event(stream)
    assert block["type"] == "WATCHING"
    srv.server.store.insert_anomalies(
        pa.table(
            {
                "device_id": ["late-dev"],
                "metric": ["humidity"],
                "time": pa.array([now_ms()], pa.timestamp("ms", tz="UTC")),
                "value": [1.0],
                "kind": ["stuck"],
                "score": [0.55],
                "zscore": [0.0],
            }
        )
    )
    with urllib.request.urlopen(
        srv.http + "/api/events?device=late-dev&since=" + block["cursor"], timeout=30
    ) as s:
        assert read_event(s)["type"] == "WATCHING"
        event = read_event(s)
    assert event["type"] == "OPENED" and event["anomaly"]["device_id"] == "late-dev"
    status, refused = get(srv.http + "/api/events?since=not-a-cursor")
    assert status == 400 and "cursor" in refused["message"]


def read_event(stream) -> dict:
    lines = []
    while True:
        line = stream.readline().decode().rstrip("\n")
        if line == "" and lines:
            data = [ln for ln in lines if ln.startswith("data: ")]
            if data:
                return json.loads(data[0].removeprefix("data: "))
            lines = []
        elif line:
            lines.append(line)


def test_tokens_guard_the_console_when_auth_is_on(chdb_dir):
    srv = ServerThread(
        Config(port=0, data_dir=chdb_dir, database="t_" + uuid.uuid4().hex[:12], auth=True, http_port=0)
    )
    try:
        registry = ClickHouseTokens(srv.server.store.backend)
        reader, device = registry.add("reader", "wall"), registry.add("device", "dev-1")
        srv.server.auth.refresh()
        base = f"http://127.0.0.1:{srv.server.console.port}"
        assert get(base + "/api/stats")[0] == 401
        assert get(base + "/api/stats", "iot_madeup")[0] == 401
        assert get(base + "/api/stats", device)[0] == 403
        assert get(base + "/api/stats", reader)[0] == 200
        assert get(base + "/api/events", device)[0] == 403
        with urllib.request.urlopen(base + "/", timeout=10) as page:  # the page itself is public; data is not
            assert b"iotstream" in page.read()
    finally:
        srv.stop()


def test_console_is_off_without_http_port(server):
    assert server.server.console is None


def test_live_feeds_are_capped(fed):
    from iotstream.console.server import MAX_STREAMS

    srv, _ = fed
    streams = []
    # feeds of earlier tests, closed by their clients, free their slots
    poll(lambda: not srv.server.console.feeds, 10, "earlier tests' feeds closed")
    try:
        for _ in range(MAX_STREAMS):
            streams.append(urllib.request.urlopen(srv.http + "/api/events", timeout=30))
            assert read_event(streams[-1])["type"] == "WATCHING"
        status, refused = get(srv.http + "/api/events")
        assert status == 429 and refused["code"] == "RESOURCE_EXHAUSTED"
        assert get(srv.http + "/api/stats")[0] == 200  # the rest of the console still answers
        streams.pop().close()

        def reopened():
            try:
                return urllib.request.urlopen(srv.http + "/api/events", timeout=30)
            except urllib.error.HTTPError as exc:
                assert exc.code == 429
                return None

        # the closed feed's slot frees within a second (GONE_CHECK_S)
        streams.append(poll(reopened, 10, "the closed feed's slot freed", every=0.5))
        assert read_event(streams[-1])["type"] == "WATCHING"
    finally:
        for s in streams:
            s.close()


def test_query_server_role_serves_the_console_too(fed, chdb_dir):
    """`query-server --http-port`: a node with only the query role, over the data the fed node stored."""
    srv, data = fed
    alone = ServerThread(
        Config(
            port=0, data_dir=chdb_dir, database=srv.config.database, roles=frozenset({"query"}), http_port=0
        )
    )
    try:
        status, page = get(f"http://127.0.0.1:{alone.server.console.port}/api/devices")
        assert status == 200 and [d["device_id"] for d in page["devices"]] == sorted(
            d.device_id for d in data
        )
    finally:
        alone.stop()


def test_console_speaks_https_with_the_nodes_certificate(chdb_dir, tmp_path):
    import ssl

    from security_fixtures import make_pki

    from iotstream.common.tls import ServerTLS

    pki = make_pki(tmp_path)
    srv = ServerThread(
        Config(
            port=0,
            data_dir=chdb_dir,
            database="t_" + uuid.uuid4().hex[:12],
            http_port=0,
            tls=ServerTLS(pki.path("server.pem"), pki.path("server.key")),
        )
    )
    try:
        port = srv.server.console.port
        import socket

        silent = socket.create_connection(("127.0.0.1", port))  # connects, never says hello: holds nobody up
        trusting = ssl.create_default_context(cafile=pki.path("ca.pem"))
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}/api/stats", context=trusting, timeout=30
        ) as reply:
            assert reply.status == 200 and "readings" in json.loads(reply.read())
        with pytest.raises(urllib.error.URLError):  # a client that does not trust the CA gets no answer
            urllib.request.urlopen(
                f"https://127.0.0.1:{port}/api/stats", context=ssl.create_default_context(), timeout=30
            )
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # and plain HTTP is not served
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stats", timeout=30)
        silent.close()
    finally:
        srv.stop()


def test_connections_past_the_cap_are_closed_and_the_console_recovers(fed):
    import socket

    from iotstream.console.server import MAX_CONNECTIONS

    srv, _ = fed
    port = int(srv.http.rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS)]
    try:
        deadline = time.monotonic() + 10
        while True:  # the held sockets are accepted one by one; the next connection then finds no slot
            extra = socket.create_connection(("127.0.0.1", port))
            extra.settimeout(10)
            try:
                extra.sendall(b"GET /api/stats HTTP/1.0\r\n\r\n")
                answer = extra.recv(100)
            except ConnectionError:  # closed with our request unread: a reset
                answer = b""
            extra.close()
            if answer == b"":
                break
            assert time.monotonic() < deadline, "a connection past the cap was answered"
    finally:
        for s in held:
            s.close()

    def answers() -> bool:
        try:
            status = get(srv.http + "/api/stats")[0]
        except (urllib.error.URLError, ConnectionError):
            return False
        assert status == 200
        return True

    # each held connection's thread ends at its read timeout or its close
    poll(answers, 40, "the console answering again", every=0.2)
