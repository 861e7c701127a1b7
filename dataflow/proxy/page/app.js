// The live page of the dataflow proxy: plain JS, no library, nothing fetched but this proxy's
// own API (GET /pipelines, GET /pipelines/{name}/describe), polled every REFRESH_MS.
"use strict";

const REFRESH_MS = 2000;
const SVG = "http://www.w3.org/2000/svg";
const COL = 270, ROW = 92, STEP_W = 200, STEP_H = 72, TOPIC_W = 200, TOPIC_H = 34, PAD = 16;

let selected = decodeURIComponent(location.hash.slice(1)) || null;

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

function shortTopic(topic) {
  const parts = topic.split(".");
  return parts.length > 3 ? parts.slice(-3).join(".") : topic;
}

function renderList(pipelines) {
  const list = document.getElementById("pipelines");
  list.replaceChildren();
  if (!pipelines.length) list.append(el("li", { class: "muted" }, "no pipeline loaded"));
  for (const p of pipelines) {
    const item = el("li", { class: "pipeline-item" + (p.name === selected ? " active" : ""), "data-name": p.name });
    const head = el("div");
    head.append(el("span", { class: "name" }, p.name), el("span", { class: `state ${p.state}` }, p.state));
    item.append(head, el("div", { class: "muted" }, `v${p.version} · ${p.summary}`));
    const engines = Object.keys(p.streams || {});
    item.append(el("div", { class: "muted engines" }, engines.length ? "engines: " + engines.join(", ") : "no engine"));
    item.addEventListener("click", () => { selected = p.name; location.hash = encodeURIComponent(p.name); refresh(); });
    list.append(item);
  }
}

// A layered layout: topics nobody writes on the left, each step one column right of its
// inputs, its sink one column further; a cycle is cut after as many passes as nodes.
function layout(d) {
  const layer = new Map(), order = [];
  const add = (id) => { if (!layer.has(id)) { layer.set(id, 0); order.push(id); } };
  const steps = d.steps || [];
  for (const s of steps) {
    for (const src of s.sources) add("t:" + src.topic);
    for (const t of s.triggers) add("t:" + t.topic);
  }
  for (const s of steps) { add("s:" + s.index); add("t:" + s.sink); }
  for (let pass = 0; pass < order.length; pass++) {
    let changed = false;
    for (const s of steps) {
      const inputs = s.sources.map((x) => x.topic).concat(s.triggers.map((x) => x.topic));
      const want = 1 + Math.max(0, ...inputs.map((t) => layer.get("t:" + t)));
      if (want > layer.get("s:" + s.index)) { layer.set("s:" + s.index, want); changed = true; }
      if (want + 1 > layer.get("t:" + s.sink)) { layer.set("t:" + s.sink, want + 1); changed = true; }
    }
    if (!changed) break;
  }
  const rows = new Map(), pos = new Map();
  for (const id of order) {
    const l = layer.get(id), r = rows.get(l) || 0;
    rows.set(l, r + 1);
    pos.set(id, { x: PAD + l * COL, y: PAD + r * ROW });
  }
  const width = PAD * 2 + (Math.max(0, ...layer.values()) + 1) * COL;
  const height = PAD * 2 + Math.max(1, ...rows.values()) * ROW;
  return { pos, width, height };
}

function edge(root, from, to, fromW, h1, h2, cls, label) {
  const x1 = from.x + fromW, y1 = from.y + h1 / 2, x2 = to.x, y2 = to.y + h2 / 2, mx = (x1 + x2) / 2;
  root.append(svg("path", { class: `edge ${cls}`, d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, "marker-end": "url(#arrow)" }));
  // Under the topic it reads from: the space between two rows is free.
  if (label) root.append(svg("text", { class: "edge-label", x: from.x + 8, y: from.y + h1 + 13 }, label));
}

function renderGraph(d) {
  const { pos, width, height } = layout(d);
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}` });
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
  marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8a93a5" }));
  defs.append(marker);
  root.append(defs);
  const steps = d.steps || [];
  for (const s of steps) {
    const at = pos.get("s:" + s.index);
    for (const src of s.sources) {
      const bits = [];
      if (src.tensors) bits.push(src.tensors.join(","));
      for (const [k, v] of Object.entries(src.renames || {})) bits.push(`${k}→${v}`);
      if (bits.length && s.sources.length > 1) bits.unshift(`to ${s.name}:`);
      edge(root, pos.get("t:" + src.topic), at, TOPIC_W, TOPIC_H, STEP_H, "source", bits.join(" "));
    }
    for (const t of s.triggers) edge(root, pos.get("t:" + t.topic), at, TOPIC_W, TOPIC_H, STEP_H, "trigger", "trigger " + (s.triggers_join || ""));
    edge(root, at, pos.get("t:" + s.sink), STEP_W, STEP_H, TOPIC_H, "sink", "");
  }
  for (const [id, p] of pos) {
    if (!id.startsWith("t:")) continue;
    const topic = id.slice(2), g = svg("g", { class: "topic", "data-topic": topic, transform: `translate(${p.x},${p.y})` });
    g.append(svg("title", {}, topic), svg("rect", { width: TOPIC_W, height: TOPIC_H, rx: 17 }));
    g.append(svg("text", { x: TOPIC_W / 2, y: TOPIC_H / 2 + 4, "text-anchor": "middle" }, shortTopic(topic)));
    root.append(g);
  }
  for (const s of steps) {
    const p = pos.get("s:" + s.index), live = s.live || { rates: {}, totals: {}, lag_total: 0 };
    const g = svg("g", { class: "step" + (live.totals.errors ? " errors" : ""), "data-step": s.name, transform: `translate(${p.x},${p.y})` });
    const kind = [];
    if (s.join) kind.push(`join ${s.join} ${s.window_ms} ms`);
    if (s.triggers.length) kind.push(`trigger ${s.triggers_join}`);
    if (s.batch) kind.push(`batch ${s.batch.size || ""}`);
    g.append(svg("title", {}, `${s.name} → ${s.sink}`), svg("rect", { width: STEP_W, height: STEP_H, rx: 6 }));
    g.append(svg("text", { class: "title", x: 8, y: 16 }, s.name));
    g.append(svg("text", { x: 8, y: 31, class: "kind" }, kind.join(" · ") || "map"));
    g.append(svg("text", { x: 8, y: 47, class: "rates", "data-step": s.name }, `in ${rate(live.rates.records_in)}  out ${rate(live.rates.records_out)}`));
    g.append(svg("text", { x: 8, y: 63, class: "counts" }, `err ${live.totals.errors || 0}  lag ${live.lag_total || 0}`));
    if (live.waiting) {
      g.classList.add("waiting");
      g.append(svg("title", {}, `waiting ${Math.round(live.stuck_seconds || 0)} s: ${live.waiting}`));
    }
    root.append(g);
  }
  document.getElementById("graph").replaceChildren(root);
}

function renderDetail(d) {
  document.getElementById("hint").hidden = true;
  document.getElementById("selected").hidden = false;
  document.getElementById("title").replaceChildren(
    el("span", {}, `${d.name} v${d.version}`), el("span", { class: `state ${d.state}` }, d.state));
  document.getElementById("meta").textContent = `uid ${d.uid} · ${d.summary || ""}` + (d.reason ? ` · ${d.reason}` : "");
  renderGraph(d);
  const body = document.querySelector("#figures tbody");
  body.replaceChildren();
  for (const s of d.steps || []) {
    const live = s.live || { rates: {}, totals: {}, lag_total: 0 };
    const t = live.totals, r = live.rates;
    const row = el("tr", { "data-step": s.name });
    const cells = [s.name, rate(r.records_in), rate(r.records_out), t.records_in, t.records_out, t.filtered,
      t.errors, t.empty, t.late, live.lag_total, s.stateful ? `${live.state_records} / ${live.state_bytes} B` : "-"];
    cells.forEach((c, i) => row.append(el("td", i === 1 ? { class: "rate-in" } : {}, String(c ?? 0))));
    body.append(row);
    if (live.waiting) {
      const note = el("tr", { class: "waiting", "data-step": s.name });
      note.append(el("td", { colspan: "11" }, `${s.name} has made no progress for ${Math.round(live.stuck_seconds || 0)} s: ${live.waiting}`));
      body.append(note);
    }
  }
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

refresh();
setInterval(refresh, REFRESH_MS);
