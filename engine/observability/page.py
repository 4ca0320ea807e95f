"""The status page: one HTML document with an inline style and script, no build step.

``GET /status`` serves :data:`STATUS_HTML`. Its script polls ``status.json`` (relative, so
the page works behind a path prefix) every second, or every ``?refresh=<ms>``, and draws:

* the event model of the loaded plugins as an inline SVG diagram (commands -> events ->
  projections and automations, automations -> the commands they send), declared edges
  dashed, edges seen at run time solid with their count;
* each runner's state, checkpoint, lag and rate, with a live SVG chart of its lag and
  throughput over the last minutes;
* the profiler's percentiles (degraded operations flagged), held leases, recent errors
  and parked events.

Everything is drawn with DOM calls (``textContent``, ``setAttribute``), never by parsing
strings as HTML, so names and error messages from plugins cannot inject markup. The page
loads nothing from elsewhere; :data:`CONTENT_SECURITY_POLICY` allows exactly its own
inline style and script (by hash) and requests to its own origin. With a bearer token
configured the page asks for it and keeps it in the tab's ``sessionStorage``.
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["CONTENT_SECURITY_POLICY", "STATUS_HTML"]

_STYLE = """
:root { --ink: #1f2933; --muted: #697586; --line: #d8dee6; --bg: #f6f8fa; --card: #fff;
  --command: #2563eb; --command-bg: #dbeafe; --event: #ea580c; --event-bg: #ffedd5;
  --projection: #16a34a; --projection-bg: #dcfce7; --automation: #7c3aed;
  --automation-bg: #ede9fe; --bad: #dc2626; --ok: #16a34a; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--ink); background: var(--bg); }
header { display: flex; flex-wrap: wrap; gap: 18px; align-items: baseline; padding: 12px 20px;
  background: var(--ink); color: #fff; }
header h1 { margin: 0; font-size: 18px; }
header .fact b { font-weight: 600; }
header .fact { color: #cbd2d9; }
#facts { display: flex; flex-wrap: wrap; gap: 14px; }
#live { margin-left: auto; }
#live.stale { color: #fca5a5; }
main { display: grid; grid-template-columns: minmax(0, 1fr); gap: 16px; padding: 16px 20px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: 12px 16px; overflow-x: auto; }
section h2 { margin: 0 0 8px; font-size: 15px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line);
  vertical-align: middle; white-space: nowrap; }
td.wrap { white-space: normal; word-break: break-word; }
th { color: var(--muted); font-weight: 600; font-size: 12px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.empty { color: var(--muted); font-style: italic; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px;
  background: var(--bg); border: 1px solid var(--line); }
.badge.live { color: var(--ok); border-color: var(--ok); }
.badge.failed, .badge.degraded, .badge.retrying { color: var(--bad); border-color: var(--bad); }
.lag-bad { color: var(--bad); font-weight: 600; }
.legend { color: var(--muted); font-size: 12px; margin: 4px 0 0; }
.legend .sw { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 10px;
  border-radius: 2px; vertical-align: -1px; }
svg text { font: 12px system-ui, sans-serif; }
svg .node rect { stroke-width: 1.5; }
svg .node.command rect { fill: var(--command-bg); stroke: var(--command); }
svg .node.event rect { fill: var(--event-bg); stroke: var(--event); }
svg .node.projection rect { fill: var(--projection-bg); stroke: var(--projection); }
svg .node.automation rect { fill: var(--automation-bg); stroke: var(--automation); }
svg .band { fill: var(--bg); }
svg .decider { fill: none; stroke: #b6c0ca; stroke-dasharray: 5 4; }
svg .band-title { font-weight: 600; }
svg .band-note, svg .column { fill: var(--muted); }
svg .edge { fill: none; stroke: #9aa5b1; }
svg .edge.declared { stroke-dasharray: 4 3; }
svg .edge.observed { stroke: #3e4c59; }
svg .edge.sends.observed { stroke: var(--automation); }
svg .count { fill: #3e4c59; font-size: 10px; }
svg.chart .lag { fill: none; stroke: var(--bad); stroke-width: 1.5; }
svg.chart .tput { fill: none; stroke: var(--command); stroke-width: 1.5; }
svg.chart .frame { fill: #fbfcfd; stroke: var(--line); }
svg.chart text { font-size: 10px; fill: var(--muted); }
.sw.command { background: var(--command-bg); border: 1px solid var(--command); }
.sw.event { background: var(--event-bg); border: 1px solid var(--event); }
.sw.projection { background: var(--projection-bg); border: 1px solid var(--projection); }
.sw.automation { background: var(--automation-bg); border: 1px solid var(--automation); }
.sw.lag { background: var(--bad); }
.sw.tput { background: var(--command); }
#token { display: none; gap: 8px; align-items: center; }
#token.shown { display: flex; }
"""

_SCRIPT = r"""
"use strict";
const SVG = "http://www.w3.org/2000/svg";
const params = new URLSearchParams(location.search);
const REFRESH = Math.max(200, Number(params.get("refresh")) || 1000);
let refreshes = 0;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  }
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  }
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}
function fill(id, ...nodes) { document.getElementById(id).replaceChildren(...nodes); }
function seconds(v) {
  if (v === null || v === undefined) return "\u2013";
  if (v < 0.001) return (v * 1e6).toFixed(0) + " \u00b5s";
  if (v < 1) return (v * 1e3).toFixed(2) + " ms";
  return v.toFixed(2) + " s";
}
function duration(v) {
  const t = Math.floor(v);
  if (t < 120) return t + " s";
  if (t < 7200) return Math.floor(t / 60) + " min";
  return Math.floor(t / 3600) + " h";
}
function short(text, n) { return text.length > n ? text.slice(0, n - 1) + "\u2026" : text; }
function table(headers, rows, empty) {
  if (!rows.length) return h("p", {class: "empty"}, empty);
  const head = h("tr", {}, ...headers.map(([t, cls]) => h("th", {class: cls || null}, t)));
  return h("table", {}, h("thead", {}, head), h("tbody", {}, ...rows));
}

// -- the event model ------------------------------------------------------------------
const COL_X = [10, 300, 590], NODE_W = 230, NODE_H = 26, ROW = 34, TOP = 38;

function drawModel(model) {
  const pos = new Map();
  const svg = s("svg", {id: "model-svg", width: 830, role: "img",
    "aria-label": "event model: commands, events, projections and automations"});
  const defs = s("defs", {});
  for (const [id, color] of [["arrow", "#9aa5b1"], ["arrow-dark", "#3e4c59"],
                             ["arrow-auto", "#7c3aed"]]) {
    defs.append(s("marker", {id, viewBox: "0 0 8 8", refX: 7, refY: 4, markerWidth: 7,
      markerHeight: 7, orient: "auto-start-reverse"}, s("path", {d: "M0,0 L8,4 L0,8 z", fill: color})));
  }
  svg.append(defs);
  const columns = ["commands", "events", "read models & automations"];
  columns.forEach((c, i) => svg.append(s("text", {class: "column", x: COL_X[i], y: 14}, c)));
  const bands = s("g", {}), edges = s("g", {}), nodes = s("g", {}), labels = s("g", {});
  svg.append(bands, edges, nodes, labels);
  let y = 24;
  for (const plugin of model.plugins) {
    const readers = [
      ...plugin.projections.map(p => [p, "projection"]),
      ...plugin.automations.map(a => [a, "automation"])];
    const cols = [plugin.commands.map(c => [c, "command"]),
                  plugin.events.map(e => [e, "event"]), readers];
    const rows = Math.max(1, ...cols.map(c => c.length));
    const height = TOP + rows * ROW + 6;
    bands.append(s("rect", {class: "band", x: 0, y, width: 830, height, rx: 6}));
    bands.append(s("text", {class: "band-title", x: 10, y: y + 18}, plugin.name));
    bands.append(s("text", {class: "band-note", x: 10 + 8 * plugin.name.length + 12, y: y + 18},
                   short(plugin.description || "", 90)));
    cols.forEach((col, i) => col.forEach(([node, kind], row) => {
      const x = COL_X[i], ny = y + TOP + row * ROW;
      pos.set(node.id, {x, y: ny, col: i});
      const label = kind === "automation" ? "\u2699 " + node.name : node.name;
      nodes.append(s("g", {class: "node " + kind, "data-node": node.id},
        s("title", {}, node.id),
        s("rect", {x, y: ny, width: NODE_W, height: NODE_H, rx: kind === "event" ? 2 : 8}),
        s("text", {x: x + 8, y: ny + 17}, short(label, 32))));
    }));
    y += height + 10;
  }
  let bottom = y;
  // A decider's commands may emit any of its events: one dashed frame around them says
  // so; the command -> event lines drawn are the ones seen at run time.
  for (const plugin of model.plugins) {
    for (const decider of plugin.deciders || []) {
      const ys = [...decider.commands, ...decider.events].map(id => pos.get(id)).filter(p => p)
        .map(p => p.y);
      if (!ys.length) continue;
      const top = Math.min(...ys) - 5, low = Math.max(...ys) + NODE_H + 5;
      bands.append(s("rect", {class: "decider", x: COL_X[0] - 5, y: top,
        width: COL_X[1] + NODE_W - COL_X[0] + 10, height: low - top, rx: 8}));
    }
  }
  for (const edge of model.edges) {
    const a = pos.get(edge.from), b = pos.get(edge.to);
    if (!a || !b) continue;
    const observed = edge.count !== null && edge.count > 0;
    if (edge.kind === "emits" && !observed) continue;
    const cls = ["edge", edge.kind, observed ? "observed" : "declared"].join(" ");
    const marker = observed ? (edge.kind === "sends" ? "url(#arrow-auto)" : "url(#arrow-dark)")
                            : "url(#arrow)";
    let d, lx, ly;
    if (b.col > a.col) {
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x - 2, y2 = b.y + NODE_H / 2;
      const mx = (x1 + x2) / 2;
      d = `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`;
      lx = x1 + 4; ly = y1 - 4;
    } else {
      // An automation's command goes back to the first column: loop underneath.
      const x1 = a.x + NODE_W / 2, y1 = a.y + NODE_H, x2 = b.x + NODE_W / 2, y2 = b.y + NODE_H + 2;
      const low = Math.max(y1, y2) + 28;
      d = `M${x1},${y1} C${x1},${low} ${x2},${low} ${x2},${y2}`;
      lx = (x1 + x2) / 2; ly = low - 4;
      bottom = Math.max(bottom, low + 10);
    }
    const width = observed ? Math.min(4, 1.2 + Math.log10(edge.count + 1)) : 1.2;
    edges.append(s("path", {class: cls, d, "stroke-width": width, "marker-end": marker,
      "data-from": edge.from, "data-to": edge.to, "data-kind": edge.kind,
      "data-count": observed ? edge.count : 0},
      s("title", {}, `${edge.from} ${edge.kind} ${edge.to}` +
                     (observed ? ` (seen ${edge.count}\u00d7)` : " (declared)"))));
    if (observed) labels.append(s("text", {class: "count", x: lx, y: ly}, "\u00d7" + edge.count));
  }
  svg.setAttribute("height", bottom);
  svg.setAttribute("viewBox", `0 0 830 ${bottom}`);
  return svg;
}

// -- runners ------------------------------------------------------------------------
function chart(series, span) {
  const W = 240, H = 44, svg = s("svg", {class: "chart", width: W, height: H,
    viewBox: `0 0 ${W} ${H}`});
  svg.append(s("rect", {class: "frame", x: 0.5, y: 0.5, width: W - 1, height: H - 1}));
  if (!series || !series.age.length) return svg;
  const maxLag = Math.max(1, ...series.lag), maxTput = Math.max(1, ...series.throughput);
  const line = (values, max) => series.age.map((age, i) =>
    `${(W - 2 - (age / span) * (W - 4)).toFixed(1)},${(H - 3 - (values[i] / max) * (H - 14)).toFixed(1)}`
  ).join(" ");
  svg.append(s("polyline", {class: "lag", points: line(series.lag, maxLag)}));
  svg.append(s("polyline", {class: "tput", points: line(series.throughput, maxTput)}));
  svg.append(s("text", {x: 4, y: 10}, `lag \u2264 ${maxLag}`));
  svg.append(s("text", {x: W - 4, y: 10, "text-anchor": "end"}, `${maxTput.toFixed(1)} ev/s`));
  return svg;
}

function drawRunners(data) {
  // The charts span the history kept so far (at least a minute), up to all of it.
  const ages = Object.values(data.history.runners).flatMap(r => r.age);
  const span = Math.min(data.history.seconds, Math.max(60, ...ages));
  const rows = data.runners.map(r => h("tr", {"data-runner": r.name, "data-lag": r.lag,
      "data-checkpoint": r.checkpoint, "data-state": r.state},
    h("td", {}, r.name), h("td", {}, r.kind),
    h("td", {}, h("span", {class: "badge " + r.state}, r.state)),
    h("td", {class: "num"}, r.checkpoint), h("td", {class: "num"}, r.head),
    h("td", {class: "num lag" + (r.lag > 0 ? " lag-bad" : "")}, r.lag),
    h("td", {class: "num"}, r.rate.toFixed(1)), h("td", {class: "num"}, r.processed),
    h("td", {class: "num"}, r.parked), h("td", {class: "num"}, r.restarts),
    h("td", {}, r.lease ? `held (token ${r.lease.token})` : "\u2013"),
    h("td", {}, chart(data.history.runners[r.name], span))));
  fill("runners", table([["runner"], ["kind"], ["state"], ["checkpoint", "num"], ["head", "num"],
    ["lag", "num"], ["ev/s", "num"], ["processed", "num"], ["parked", "num"],
    ["restarts", "num"], ["lease"], [`lag & throughput, last ${duration(span)}`]],
    rows, "no runners"));
}

function drawProfiler(profiler) {
  const rows = Object.values(profiler.operations).map(o => h("tr",
      {"data-operation": o.operation, "data-degraded": o.degraded},
    h("td", {}, o.operation), h("td", {class: "num"}, o.count),
    h("td", {class: "num"}, o.errors), h("td", {class: "num"}, o.rate.toFixed(2)),
    h("td", {class: "num"}, seconds(o.percentiles.p50)),
    h("td", {class: "num"}, seconds(o.percentiles.p95)),
    h("td", {class: "num"}, seconds(o.percentiles.p99)),
    h("td", {class: "num"}, seconds(o.max)), h("td", {class: "num"}, seconds(o.baseline)),
    h("td", {}, o.degraded ? h("span", {class: "badge degraded"}, "degraded") : "ok")));
  fill("profiler", table([["operation"], ["count", "num"], ["errors", "num"], ["per s", "num"],
    ["p50", "num"], ["p95", "num"], ["p99", "num"], ["max", "num"],
    [`baseline ${profiler.tracked}`, "num"], ["state"]], rows,
    `nothing recorded in the last ${duration(profiler.window_seconds)}`));
}

function drawLists(data) {
  fill("locks", table([["key"], ["owner"], ["token", "num"], ["held for", "num"]],
    data.locks.map(l => h("tr", {"data-lock": l.key}, h("td", {}, l.key), h("td", {}, l.owner),
      h("td", {class: "num"}, l.token), h("td", {class: "num"}, duration(l.held_seconds)))),
    "no leases held"));
  fill("errors", table([["at"], ["source"], ["kind"], ["message"]],
    data.errors.recent.map(e => h("tr", {}, h("td", {}, e.at), h("td", {}, e.source),
      h("td", {}, e.kind), h("td", {class: "wrap"}, e.message))), "no errors"));
  fill("parked", table([["runner"], ["position", "num"], ["stream"], ["type"], ["attempts", "num"],
    ["reason"]],
    data.parked.recent.map(p => h("tr", {"data-parked": p.runner}, h("td", {}, p.runner),
      h("td", {class: "num"}, p.position), h("td", {}, p.stream_id), h("td", {}, p.type),
      h("td", {class: "num"}, p.attempts), h("td", {class: "wrap"}, p.reason))),
    "no parked events"));
}

let modelKey = "";
function render(data) {
  document.title = `eskit \u00b7 ${data.node_id}`;
  fill("node", data.node_id);
  fill("facts",
    h("span", {class: "fact"}, "store ", h("b", {}, data.store)),
    h("span", {class: "fact"}, "head ", h("b", {id: "head"}, data.head)),
    h("span", {class: "fact"}, "up ", h("b", {}, duration(data.uptime_seconds))),
    h("span", {class: "fact"}, "errors ", h("b", {}, data.errors.total)),
    h("span", {class: "fact"}, "parked ", h("b", {}, data.parked.total)),
    h("span", {class: "fact"}, "v", data.version));
  const key = JSON.stringify(data.model);
  if (key !== modelKey) { modelKey = key; fill("model", drawModel(data.model)); }
  drawRunners(data);
  drawProfiler(data.profiler);
  drawLists(data);
  refreshes += 1;
  document.body.dataset.head = data.head;
  document.body.dataset.refreshes = refreshes;
  const live = document.getElementById("live");
  live.className = "";
  live.textContent = "live \u00b7 " + data.time.replace("T", " ").replace("+00:00", " UTC");
}

async function refresh() {
  const headers = {};
  const token = sessionStorage.getItem("eskit-token");
  if (token) headers["Authorization"] = "Bearer " + token;
  try {
    const response = await fetch("status.json", {headers, cache: "no-store"});
    if (response.status === 401) {
      document.getElementById("token").className = "shown";
      throw new Error("a bearer token is needed");
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (error) {
    const live = document.getElementById("live");
    live.className = "stale";
    live.textContent = "not updating: " + error.message;
  } finally {
    setTimeout(refresh, REFRESH);
  }
}

document.getElementById("token").addEventListener("submit", event => {
  event.preventDefault();
  sessionStorage.setItem("eskit-token", document.getElementById("token-value").value);
  document.getElementById("token").className = "";
});
refresh();
"""

_BODY = """<header>
<h1>eskit &middot; <span id="node">&hellip;</span></h1>
<span id="facts"></span>
<form id="token"><label>token <input id="token-value" type="password"
 autocomplete="off"></label><button>use</button></form>
<span id="live">connecting&hellip;</span>
</header>
<main>
<section><h2>Event model</h2><div id="model"></div>
<p class="legend">
<span class="sw command"></span>command
<span class="sw event"></span>event
<span class="sw projection"></span>projection
<span class="sw automation"></span>automation
&middot; dashed frame: a decider's commands and the events it may emit &middot;
dashed line: declared &middot; solid: seen at run time (&times; count)</p></section>
<section><h2>Runners</h2><div id="runners"></div>
<p class="legend"><span class="sw lag"></span>lag
<span class="sw tput"></span>throughput (events/s)</p></section>
<section><h2>Profiler</h2><div id="profiler"></div></section>
<section><h2>Leases held</h2><div id="locks"></div></section>
<section><h2>Recent errors</h2><div id="errors"></div></section>
<section><h2>Parked events</h2><div id="parked"></div></section>
</main>"""


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


#: The page served at ``GET /status``.
STATUS_HTML = (
    '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    "<title>eskit status</title>\n"
    f"<style>{_STYLE}</style>\n</head>\n<body>\n{_BODY}\n<script>{_SCRIPT}</script>\n"
    "</body>\n</html>\n"
).encode()

#: The ``content-security-policy`` of the page: its own inline style and script only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; "
    f"script-src '{_sha256(_SCRIPT)}'; "
    f"style-src '{_sha256(_STYLE)}'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
).encode()
