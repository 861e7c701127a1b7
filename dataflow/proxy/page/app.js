// The live page of the dataflow proxy: plain JS and SVG, no library, nothing fetched but this
// proxy's own API (GET /pipelines, GET /pipelines/{name}/describe), polled every REFRESH_MS.
//
// The graph is the pipeline as requests flow: its inputs, each step, each model (the node
// between the topic a step writes, MODEL.inputs, and the topic the next steps read,
// MODEL.outputs), its outputs; the error topic and the step that carries it to the outputs
// in a lane of their own below.
"use strict";

const REFRESH_MS = 2000;
const HISTORY_S = 600;
const SVG = "http://www.w3.org/2000/svg";
const GAP = 30, ROW = 100, PAD = 14, LANE_GAP = 30;
const SIZE = { step: [156, 86], model: [112, 40], inputs: [84, 36], outputs: [84, 36], errors: [84, 36], topic: [150, 36] };

let selected = decodeURIComponent(location.hash.slice(1)) || null;
let selectedStep = null;
let filter = "";
let lastList = [];

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

async function getJSON(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) {
    let reason = `HTTP ${response.status}`;
    try { reason = (await response.json()).error || reason; } catch (e) { /* not JSON */ }
    throw new Error(reason);
  }
  return response.json();
}

function rate(value) { return `${(value || 0).toFixed(1)}/s`; }

// At most n characters (the whole text is in the node's tooltip).
function fit(text, n) { return text.length > n ? text.slice(0, n - 1) + "…" : text; }

function shortTopic(topic) {
  const parts = topic.split(".");
  return parts.length > 3 ? parts.slice(-3).join(".") : topic;
}

// -- the list of pipelines ---------------------------------------------------------------

// Trouble first: Failed, then trouble signals, then not Ready; then by name.
function troubleRank(p) {
  if (p.state === "Failed") return 0;
  if ((p.trouble || []).length) return 1;
  if (p.state !== "Ready") return 2;
  return 3;
}

function renderList(pipelines) {
  lastList = pipelines;
  const list = document.getElementById("pipelines");
  list.replaceChildren();
  const shown = pipelines
    .filter((p) => !filter || p.name.toLowerCase().includes(filter))
    .sort((a, b) => troubleRank(a) - troubleRank(b) || a.name.localeCompare(b.name));
  document.getElementById("count").textContent =
    shown.length === pipelines.length ? `${pipelines.length}` : `${shown.length} of ${pipelines.length}`;
  if (!pipelines.length) list.append(el("li", { class: "muted" }, "no pipeline loaded"));
  for (const p of shown) {
    const trouble = p.trouble || [];
    const item = el("li", { class: "pipeline-item" + (p.name === selected ? " active" : "") + (trouble.length ? " trouble" : ""), "data-name": p.name });
    const head = el("div");
    head.append(el("span", { class: "name" }, p.name), el("span", { class: `state ${p.state}` }, p.state));
    if (trouble.length) head.append(el("span", { class: "badge", title: trouble.join("\n") }, `⚠ ${trouble.length}`));
    item.append(head, el("div", { class: "muted" }, `v${p.version} · ${p.summary}`));
    const engines = Object.keys(p.streams || {});
    item.append(el("div", { class: "muted engines" }, engines.length ? "engines: " + engines.join(", ") : "no engine"));
    for (const t of trouble.slice(0, 2)) item.append(el("div", { class: "trouble-line" }, t));
    item.addEventListener("click", () => {
      if (selected !== p.name) selectedStep = null;
      selected = p.name;
      location.hash = encodeURIComponent(p.name);
      refresh();
    });
    list.append(item);
  }
}

// -- the flow graph ----------------------------------------------------------------------

// The node a topic stands for: a model (both its .inputs and .outputs topics), the
// pipeline's inputs or outputs, the error topic, or else the topic itself.
function topicNode(topic, d) {
  const parts = topic.split(".");
  const io = parts[parts.length - 1];
  if (topic === d.error_topic || (parts.length >= 2 && parts.slice(-2).join(".") === "errors.errors")) {
    return { id: "e:" + topic, kind: "errors", label: "errors", topic, lane: "error" };
  }
  if (parts.length >= 3 && parts[parts.length - 3] === "pipeline" && (io === "inputs" || io === "outputs")) {
    return { id: `p:${io}:${topic}`, kind: io, label: io, topic };
  }
  if (parts.length >= 3 && (io === "inputs" || io === "outputs")) {
    return { id: "m:" + parts.slice(0, -1).join("."), kind: "model", label: parts[parts.length - 2], topic };
  }
  return { id: "t:" + topic, kind: "topic", label: shortTopic(topic), topic };
}

function tensorMap(src) {
  const bits = [];
  if (src.tensors) bits.push(src.tensors.join(","));
  for (const [k, v] of Object.entries(src.renames || {})) bits.push(`${k}→${v}`);
  return bits.join(" ");
}

// Nodes and edges of a description (`d.steps` as `dataflow.describe` makes them).
function flowGraph(d) {
  const nodes = new Map(), edges = [];
  const node = (n) => {
    const known = nodes.get(n.id);
    if (known) { known.topics.add(n.topic); return known; }
    n.topics = new Set(n.topic ? [n.topic] : []);
    nodes.set(n.id, n);
    return n;
  };
  for (const s of d.steps || []) {
    const errorStep = s.sources.length > 0 && s.sources.every((x) => topicNode(x.topic, d).kind === "errors");
    const step = node({ id: "s:" + s.index, kind: "step", label: s.name, step: s, lane: errorStep ? "error" : "main" });
    for (const src of s.sources) {
      const from = node(topicNode(src.topic, d));
      edges.push({ from: from.id, to: step.id, kind: from.kind === "errors" ? "error" : "source", label: tensorMap(src), topic: src.topic });
    }
    for (const t of s.triggers) {
      const from = node(topicNode(t.topic, d));
      edges.push({ from: from.id, to: step.id, kind: "trigger", label: "trigger", topic: t.topic });
    }
    const to = node(topicNode(s.sink, d));
    edges.push({ from: step.id, to: to.id, kind: errorStep ? "error" : "sink", label: "", topic: s.sink });
  }
  return { nodes, edges };
}

// Layers left to right (a node one right of everything it reads; a cycle is cut after as
// many passes as nodes), rows within a layer; the error lane below the main one.
function layout(g) {
  const layer = new Map([...g.nodes.keys()].map((id) => [id, 0]));
  for (let pass = 0; pass < g.nodes.size; pass++) {
    let changed = false;
    for (const e of g.edges) {
      if (g.nodes.get(e.from).lane === "error" && g.nodes.get(e.to).lane !== "error") continue;
      if (layer.get(e.from) + 1 > layer.get(e.to)) { layer.set(e.to, layer.get(e.from) + 1); changed = true; }
    }
    if (!changed) break;
  }
  // The error lane ends where it joins the main graph (the pipeline's outputs).
  for (const e of g.edges) {
    const from = g.nodes.get(e.from), to = g.nodes.get(e.to);
    if (from.lane === "error" && to.lane !== "error") {
      layer.set(e.from, Math.max(layer.get(e.from), layer.get(e.to) - 1));
      for (const e2 of g.edges) if (e2.to === e.from) layer.set(e2.from, Math.max(layer.get(e2.from), layer.get(e.from) - 1));
    }
  }
  const layers = Math.max(0, ...layer.values()) + 1;
  const widths = Array(layers).fill(0);
  for (const [id, n] of g.nodes) widths[layer.get(id)] = Math.max(widths[layer.get(id)], SIZE[n.kind][0]);
  const xs = [PAD];
  for (let i = 1; i < layers; i++) xs.push(xs[i - 1] + widths[i - 1] + GAP);
  const rows = { main: new Map(), error: new Map() };
  const pos = new Map();
  for (const [id, n] of g.nodes) {
    const lane = n.lane === "error" ? "error" : "main", l = layer.get(id), r = rows[lane].get(l) || 0;
    rows[lane].set(l, r + 1);
    const [w, h] = SIZE[n.kind];
    pos.set(id, { l, r, lane, w, h, x: xs[l] + (widths[l] - w) / 2 });
  }
  const mainRows = Math.max(1, ...rows.main.values());
  const errorRows = Math.max(0, ...rows.error.values());
  for (const p of pos.values()) {
    const rowsHere = rows[p.lane].get(p.l);
    const laneRows = p.lane === "main" ? mainRows : errorRows;
    const top = p.lane === "main" ? PAD : PAD + mainRows * ROW + LANE_GAP;
    p.y = top + (p.r + (laneRows - rowsHere) / 2) * ROW + (ROW - 10 - p.h) / 2;
  }
  const width = xs[layers - 1] + widths[layers - 1] + PAD;
  const errorTop = PAD + mainRows * ROW + LANE_GAP / 2;
  const height = errorRows ? errorTop + LANE_GAP / 2 + errorRows * ROW + PAD : PAD * 2 + mainRows * ROW;
  return { pos, width, height, errorTop: errorRows ? errorTop : null };
}

// Records in and out per second, newest on the right; the time axis spans the history the
// proxy holds (at least a minute, at most HISTORY_S).
function sparkline(history, w, h) {
  const g = svg("g", { class: "spark" });
  g.append(svg("rect", { class: "spark-bg", width: w, height: h }));
  const span = Math.min(HISTORY_S, Math.max(60, ...history.map((p) => p[0] + 5)));
  const max = Math.max(1e-9, ...history.map((p) => Math.max(p[1], p[2])));
  for (const [cls, i] of [["spark-in", 1], ["spark-out", 2]]) {
    const points = history.map((p) => `${(w * (1 - p[0] / span)).toFixed(1)},${(h - 1 - (h - 2) * p[i] / max).toFixed(1)}`);
    g.append(svg("polyline", { class: cls, points: points.join(" ") }));
  }
  const minutes = Math.round(span / 60);
  g.append(svg("title", {}, `records in (blue) and out (green) per second over the last ${minutes} min; peak ${rate(max)}`));
  return g;
}

function stepKind(s) {
  const kind = [];
  if (s.join) kind.push(`join ${s.join} ${s.window_ms ?? ""} ms`);
  if (s.triggers.length) kind.push(`trigger ${s.triggers_join || ""}`);
  if (s.batch) kind.push(`batch ${s.batch.size || ""}`);
  return kind.join(" · ");
}

function drawStep(g, s) {
  const live = s.live || { rates: {}, totals: {}, lag_total: 0 };
  const [w, h] = SIZE.step, trouble = s.trouble || [];
  g.classList.add("step");
  if (live.totals.errors) g.classList.add("errors");
  if (trouble.length) g.classList.add("trouble");
  if (live.waiting) g.classList.add("waiting");
  if (s.name === selectedStep) g.classList.add("selected");
  g.setAttribute("data-step", s.name);
  const maps = s.sources.map(tensorMap).filter((m) => m).join("; ");
  g.append(svg("title", {}, [`step ${s.name} → ${s.sink}`, maps, ...trouble].filter((x) => x).join("\n")));
  g.append(svg("rect", { class: "box", width: w, height: h, rx: 6 }));
  g.append(svg("text", { class: "title", x: 8, y: 15 }, fit((trouble.length ? "⚠ " : "") + s.name, 21)));
  g.append(svg("text", { class: "kind", x: 8, y: 28 }, fit(stepKind(s) || maps || "step", 25)));
  g.append(svg("text", { class: "rates", x: 8, y: 42 }, `in ${rate(live.rates.records_in)}  out ${rate(live.rates.records_out)}`));
  const held = s.stateful ? `  held ${live.state_records || 0}` : "";
  g.append(svg("text", { class: "counts", x: 8, y: 55 }, `lag ${live.lag_total || 0}${held}  err ${live.totals.errors || 0}`));
  const spark = sparkline(s.history || [], w - 16, 20);
  spark.setAttribute("transform", `translate(8,${h - 26})`);
  g.append(spark);
  g.addEventListener("click", () => { selectedStep = s.name; refresh(); });
}

function renderGraph(d) {
  const g = flowGraph(d);
  const { pos, width, height, errorTop } = layout(g);
  // Scaled down to the page's width when wider.
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, style: `max-width: 100%; height: auto` });
  const defs = svg("defs");
  for (const [id, color] of [["arrow", "#8a93a5"], ["arrow-error", "#c9302c"]]) {
    const marker = svg("marker", { id, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
    marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: color }));
    defs.append(marker);
  }
  root.append(defs);
  if (errorTop !== null) {
    root.append(svg("line", { class: "lane", x1: 0, x2: width, y1: errorTop, y2: errorTop }));
    root.append(svg("text", { class: "lane-label", x: PAD, y: errorTop + 14 }, "error path"));
  }
  for (const e of g.edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    // A trigger enters lower than the sources, so that a trigger and a source from the same
    // node stay two lines.
    const low = e.kind === "trigger" ? 14 : 0;
    const x1 = a.x + a.w, y1 = a.y + a.h / 2 + low / 3, x2 = b.x, y2 = b.y + b.h / 2 + low, mx = (x1 + x2) / 2;
    const d = x2 > x1 ? `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}` : `M${x1},${y1} C${x1 + 40},${y1 + 60} ${x2 - 40},${y2 + 60} ${x2},${y2}`;
    const path = svg("path", { class: `edge ${e.kind}`, d, "data-from": e.from, "data-to": e.to, "marker-end": e.kind === "error" ? "url(#arrow-error)" : "url(#arrow)" });
    path.append(svg("title", {}, e.topic + (e.label ? ` (${e.label})` : "")));
    root.append(path);
  }
  for (const [id, n] of g.nodes) {
    const p = pos.get(id);
    const label = n.kind === "model" ? `model ${n.label}` : n.kind === "step" ? `step ${n.label}` : n.label;
    const node = svg("g", { class: `node ${n.kind}`, "data-id": id, "data-label": label, transform: `translate(${p.x},${p.y})` });
    if (n.kind === "step") {
      drawStep(node, n.step);
    } else {
      if (n.kind === "model") node.setAttribute("data-model", n.label);
      node.append(svg("title", {}, [...n.topics].join("\n")));
      node.append(svg("rect", { class: "box", width: p.w, height: p.h, rx: n.kind === "model" ? 4 : p.h / 2 }));
      node.append(svg("text", { x: p.w / 2, y: p.h / 2 + 4, "text-anchor": "middle" }, label));
    }
    root.append(node);
  }
  document.getElementById("graph").replaceChildren(root);
}

// -- the selected step and the table -------------------------------------------------------

function renderStep(d) {
  const box = document.getElementById("step-detail");
  const s = (d.steps || []).find((x) => x.name === selectedStep);
  box.hidden = !s;
  if (!s) return;
  const live = s.live || { rates: {}, totals: {}, lag: {}, lag_total: 0 };
  const rows = [["step", `${s.name} (#${s.index})`]];
  for (const src of s.sources) rows.push(["source", src.topic + (tensorMap(src) ? `  [${tensorMap(src)}]` : "")]);
  for (const t of s.triggers) rows.push([`trigger (${s.triggers_join})`, t.topic + (t.tensors ? `  [${t.tensors.join(",")}]` : "")]);
  if (s.join) rows.push(["join", `${s.join}, window ${s.window_ms} ms`]);
  else if (s.window_ms) rows.push(["window", `${s.window_ms} ms`]);
  if (s.batch) rows.push(["batch", `size ${s.batch.size}, window ${s.batch.window_ms} ms`]);
  rows.push(["sink", s.sink]);
  if (s.consumer_group) rows.push(["group", s.consumer_group]);
  if (s.state_topic) rows.push(["state topic", s.state_topic]);
  const t = live.totals;
  rows.push(["records", `in ${t.records_in} (${rate(live.rates.records_in)}), out ${t.records_out} (${rate(live.rates.records_out)}), filtered ${t.filtered}, empty ${t.empty}, late ${t.late}`]);
  rows.push(["lag", `${live.lag_total}` + (Object.keys(live.lag || {}).length ? ` (${Object.entries(live.lag).map(([tp, n]) => `${tp} ${n}`).join(", ")})` : "")]);
  if (s.stateful) rows.push(["held", `${live.state_records} records, ${live.state_bytes} bytes`]);
  rows.push(["errors", `${t.errors}` + (live.last_error ? `, last: ${live.last_error}` : "")]);
  if (live.waiting) rows.push(["waiting", `${Math.round(live.stuck_seconds || 0)} s without progress: ${live.waiting}`]);
  for (const tr of s.trouble || []) rows.push(["trouble", tr]);
  const table = el("table");
  for (const [k, v] of rows) {
    const tr = el("tr");
    tr.append(el("th", {}, k), el("td", {}, v));
    table.append(tr);
  }
  box.replaceChildren(el("h3", {}, `Step ${s.name}`), table);
}

function renderTable(d) {
  const body = document.querySelector("#figures tbody");
  body.replaceChildren();
  for (const s of d.steps || []) {
    const live = s.live || { rates: {}, totals: {}, lag_total: 0 };
    const t = live.totals, r = live.rates;
    const row = el("tr", { "data-step": s.name, class: (s.trouble || []).length ? "trouble" : "" });
    const cells = [s.name, rate(r.records_in), rate(r.records_out), t.records_in, t.records_out, t.filtered,
      t.errors, t.empty, t.late, live.lag_total, s.stateful ? `${live.state_records} / ${live.state_bytes} B` : "-"];
    cells.forEach((c, i) => row.append(el("td", i === 1 ? { class: "rate-in" } : {}, String(c ?? 0))));
    row.addEventListener("click", () => { selectedStep = s.name; refresh(); });
    body.append(row);
    const notes = (s.trouble || []).slice();
    if (live.waiting && !notes.some((n) => n.startsWith("stalled"))) notes.push(`no progress for ${Math.round(live.stuck_seconds || 0)} s: ${live.waiting}`);
    for (const n of notes) {
      const note = el("tr", { class: "waiting", "data-step": s.name });
      note.append(el("td", { colspan: "11" }, `${s.name}: ${n}`));
      body.append(note);
    }
  }
}

function renderDetail(d) {
  document.getElementById("hint").hidden = true;
  document.getElementById("selected").hidden = false;
  document.getElementById("title").replaceChildren(
    el("span", {}, `${d.name} v${d.version}`), el("span", { class: `state ${d.state}` }, d.state));
  document.getElementById("meta").textContent = `uid ${d.uid} · ${d.summary || ""}` + (d.reason ? ` · ${d.reason}` : "");
  const trouble = document.getElementById("trouble");
  trouble.replaceChildren(...(d.trouble || []).map((t) => el("li", {}, t)));
  trouble.hidden = !(d.trouble || []).length;
  renderGraph(d);
  renderStep(d);
  renderTable(d);
  const engines = document.getElementById("engines");
  engines.replaceChildren();
  for (const [name, e] of Object.entries(d.engines || {})) {
    const lag = e.event_loop_lag ? ` · event loop lag ${e.event_loop_lag.last_ms} ms (max ${e.event_loop_lag.max_1m_ms} ms/min)` : "";
    engines.append(el("li", {}, `${name}: ${e.error || e.state || "?"}` + (e.url ? ` (${e.url})` : "") + lag));
  }
  if (!engines.children.length) engines.append(el("li", { class: "muted" }, "no engine health server known"));
  const errors = document.getElementById("errors");
  errors.replaceChildren();
  for (const e of d.last_errors || []) errors.append(el("li", {}, `${e.step}: ${e.reason}`));
  if (!errors.children.length) errors.append(el("li", { class: "muted" }, "none"));
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const pipelines = await getJSON("/pipelines");
    renderList(pipelines);
    if (selected && pipelines.some((p) => p.name === selected)) {
      renderDetail(await getJSON(`/pipelines/${encodeURIComponent(selected)}/describe`));
    }
    status.textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    status.textContent = "error: " + e.message;
  }
}

window.addEventListener("hashchange", () => {
  const name = decodeURIComponent(location.hash.slice(1)) || null;
  if (name !== selected) { selected = name; selectedStep = null; refresh(); }
});
document.getElementById("filter").addEventListener("input", (e) => {
  filter = e.target.value.trim().toLowerCase();
  renderList(lastList);
});
refresh();
setInterval(refresh, REFRESH_MS);
