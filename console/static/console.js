// The iotstream console: fleet status, one device's charts with anomalies marked, and the live anomaly feed.
// Every call goes to the JSON endpoints of iotstream/console.py; text from the server is set as textContent.
"use strict";

const STEPS = [1e3, 5e3, 10e3, 30e3, 60e3, 300e3, 900e3, 3600e3, 21600e3, 86400e3]; // bucket widths (ms)
const POINTS = 300; // buckets per chart: the interval is the smallest step giving at most this many
const SEVERITY = { SEVERITY_LOW: "low", SEVERITY_MEDIUM: "medium", SEVERITY_HIGH: "high" };
const state = { token: sessionStorage.getItem("iotstream-token") || "", device: null, range: 3600e3, view: null,
                charts: [] };

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function headers() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

async function api(path) {
  const reply = await fetch(path, { headers: headers() });
  if (reply.status === 401 || reply.status === 403) {
    $("login").hidden = false;
    throw new Error("needs a reader token");
  }
  const body = await reply.json();
  if (!reply.ok) throw new Error(body.message || reply.status);
  return body;
}

function ago(ms) {
  if (!ms) return "–";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return Math.floor(s / 86400) + " d ago";
}

// ---- fleet -------------------------------------------------------------------------------------------------

async function refreshFleet() {
  try {
    const stats = await api("/api/stats");
    const devices = Number(stats.devices), online = Number(stats.devices_online);
    $("stat-devices").textContent = devices.toLocaleString();
    $("stat-online").textContent = online.toLocaleString();
    $("stat-silent").textContent = (devices - online).toLocaleString();
    $("stat-rate").textContent = Math.round(stats.readings_per_s).toLocaleString();
    $("stat-open").textContent = Number(stats.open_anomalies).toLocaleString();
    const prefix = encodeURIComponent($("filter").value.trim());
    const list = await api("/api/devices?limit=500&prefix=" + prefix);
    const body = $("devices");
    body.replaceChildren(...list.devices.map((d) => {
      const row = el("tr");
      row.dataset.device = d.device_id;
      const status = d.status === "ONLINE" ? "online" : "silent";
      row.append(el("td", d.device_id), el("td", status, status === "online" ? "ok" : "warn"),
                 el("td", ago(Number(d.last_stored_ms))), el("td", Number(d.readings).toLocaleString(), "num"));
      if (d.device_id === state.device) row.classList.add("selected");
      row.addEventListener("click", () => selectDevice(d.device_id));
      return row;
    }));
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    if (!state.device && list.devices.length) selectDevice(list.devices[0].device_id);
  } catch (err) {
    $("updated").textContent = String(err.message || err);
  }
}

// ---- one device --------------------------------------------------------------------------------------------

function timeRange() {
  if (state.view) return state.view;
  const end = Date.now();
  return [end - state.range, end];
}

function interval(span) {
  return STEPS.find((s) => span / s <= POINTS) || STEPS[STEPS.length - 1];
}

async function selectDevice(id) {
  state.device = id;
  state.view = null;
  for (const row of $("devices").children) row.classList.toggle("selected", row.dataset.device === id);
  $("device-title").textContent = id;
  $("ranges").hidden = false;
  await drawDevice();
}

async function drawDevice() {
  const id = state.device;
  const device = await api("/api/device/" + encodeURIComponent(id));
  const [from, to] = timeRange();
  const step = interval(to - from);
  // Bucket-aligned ends: the whole range then comes from one table (the rollup that fits the step).
  const start = Math.floor(from / step) * step, end = Math.ceil(to / step) * step;
  const query = `device=${encodeURIComponent(id)}&start_ms=${Math.floor(start)}&end_ms=${Math.ceil(end)}`;
  const [agg, anomalies] = await Promise.all([
    api(`/api/aggregate?${query}&interval_ms=${step}&func=avg&func=min&func=max`),
    api(`/api/anomalies?${query}&limit=1000`),
  ]);
  if (id !== state.device) return; // another device was picked meanwhile
  for (const chart of state.charts) chart.destroy();
  state.charts = [];
  const holder = $("charts");
  holder.replaceChildren();
  const metrics = device.latest.map((m) => m.metric);
  for (const metric of metrics) {
    const series = agg.series.find((s) => s.metric === metric) || { bucket_start_ms: [], avg: [], min: [], max: [] };
    const marks = anomalies.anomalies.filter((a) => a.metric === metric);
    holder.append(chart(metric, series, marks, step, agg.sources));
  }
}

function chart(metric, series, marks, step, sources) {
  const box = el("div", undefined, "chart");
  box.dataset.metric = metric;
  box.dataset.points = String(series.bucket_start_ms.length);
  box.dataset.anomalies = String(marks.length);
  box.dataset.sources = sources.join(",");
  const caption = el("div", undefined, "caption");
  caption.append(el("strong", metric),
                 el("span", `${marks.length} anomaly episode(s) · ${step / 1000} s buckets from ${sources.join(" + ") || "–"}`,
                    "muted rollup"));
  box.append(caption);
  const xs = series.bucket_start_ms.map((t) => Number(t) / 1000);
  const data = [xs, series.avg, series.min, series.max];
  const opts = {
    width: Math.max(300, $("charts").clientWidth - 10), height: 180,
    scales: { x: { time: true } },
    cursor: { drag: { x: true, y: false, setScale: false } },
    series: [{}, { label: "avg", stroke: "#2b6cb0", width: 1.5 },
             { label: "min", stroke: "#90cdf4", dash: [4, 4] }, { label: "max", stroke: "#90cdf4", dash: [4, 4] }],
    hooks: { draw: [(u) => drawMarks(u, marks, step)], setSelect: [zoom] },
  };
  const plot = new uPlot(opts, data, box);
  plot.over.addEventListener("dblclick", () => { state.view = null; drawDevice(); });
  state.charts.push(plot);
  return box;
}

function drawMarks(u, marks, step) {
  // An episode: a band from its first to its newest flagged reading, and a dot at its peak.
  const ctx = u.ctx;
  ctx.save();
  for (const a of marks) {
    const x0 = u.valToPos(Number(a.opened_ms) / 1000, "x", true);
    const x1 = Math.max(x0 + 3, u.valToPos((Number(a.updated_ms) + step) / 1000, "x", true));
    ctx.fillStyle = "rgba(197, 48, 48, 0.15)";
    ctx.fillRect(x0, u.bbox.top, x1 - x0, u.bbox.height);
    const y = u.valToPos(a.value, "y", true);
    ctx.fillStyle = "#c53030";
    ctx.beginPath();
    ctx.arc(u.valToPos(Number(a.time_ms) / 1000, "x", true), y, 4 * devicePixelRatio, 0, 2 * Math.PI);
    ctx.fill();
  }
  ctx.restore();
}

function zoom(u) {
  if (u.select.width < 5) return;
  const from = u.posToVal(u.select.left, "x"), to = u.posToVal(u.select.left + u.select.width, "x");
  u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
  state.view = [from * 1000, to * 1000];
  drawDevice();
}

// ---- live feed (server-sent events over fetch, so the token travels in a header) ---------------------------

function showEvent(event) {
  const a = event.anomaly;
  if (!a) return;
  const kind = event.type.toLowerCase();
  const item = el("li", undefined, "sev-" + (SEVERITY[a.severity] || "low"));
  item.append(el("strong", `${kind} `), el("span", `${a.device_id} · ${a.metric} · ${a.kind}`),
              el("div", `${SEVERITY[a.severity] || ""} · peak ${Number(a.value).toFixed(3)} · ` +
                        `${a.readings} reading(s) · ${new Date(Number(a.updated_ms)).toLocaleTimeString()}`, "muted"));
  item.dataset.device = a.device_id;
  $("feed").prepend(item);
  while ($("feed").children.length > 200) $("feed").lastChild.remove();
}

async function follow() {
  let since = "";
  for (;;) {
    try {
      const reply = await fetch("/api/events" + (since ? "?since=" + encodeURIComponent(since) : ""),
                                { headers: headers() });
      if (!reply.ok) throw new Error("feed: HTTP " + reply.status);
      $("feed-status").textContent = "live";
      const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const id = block.match(/^id: (.*)$/m), data = block.match(/^data: (.*)$/m);
          if (!data) continue; // a keepalive comment
          since = id ? id[1] : since;
          showEvent(JSON.parse(data[1]));
        }
      }
    } catch (err) {
      $("feed-status").textContent = "reconnecting (" + (err.message || err) + ")";
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// ---- start -------------------------------------------------------------------------------------------------

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("token").value.trim();
  sessionStorage.setItem("iotstream-token", state.token);
  $("login").hidden = true;
  refreshFleet();
});
$("filter").addEventListener("input", () => refreshFleet());
for (const b of document.querySelectorAll("#ranges button")) {
  b.addEventListener("click", () => { state.range = Number(b.dataset.range); state.view = null; drawDevice(); });
}
refreshFleet();
setInterval(refreshFleet, 5000);
follow();
