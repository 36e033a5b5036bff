// Shoal dashboard: polls /status every second and redraws.
"use strict";

const palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const history = [];
const svgNS = "http://www.w3.org/2000/svg";

function colour(node) { return node ? palette[(Number(node) - 1) % palette.length] : "#c8d0d8"; }
function el(tag, attrs, text) {
  const e = tag.startsWith("svg:") ? document.createElementNS(svgNS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function state(s) { return (s || "NODE_STATE_UNSPECIFIED").replace("NODE_STATE_", "").toLowerCase(); }
function kind(k) { return (k || "").replace("OPERATOR_KIND_", "").toLowerCase().replace(/_/g, "-"); }

function leaderNode(route) {
  for (const r of route.shard.replicas || []) if (r.replica_id === route.leader_replica) return r.node_id;
  return null;
}

function drawRing(st) {
  const svg = document.getElementById("ring");
  svg.replaceChildren();
  const shards = (st.routes && st.routes.shards) || [];
  const n = shards.length;
  const nodeIndex = {};
  (st.nodes || []).forEach((nd, i) => { nodeIndex[nd.id] = i; });
  shards.forEach((route, i) => {
    const a0 = (i / n) * 2 * Math.PI - Math.PI / 2, a1 = ((i + 1) / n) * 2 * Math.PI - Math.PI / 2;
    const r0 = 120, r1 = 170, gap = n > 1 ? 0.004 : 0;
    const p = (r, a) => `${(r * Math.cos(a)).toFixed(2)} ${(r * Math.sin(a)).toFixed(2)}`;
    const large = a1 - a0 > Math.PI ? 1 : 0;
    const d = `M ${p(r1, a0 + gap)} A ${r1} ${r1} 0 ${large} 1 ${p(r1, a1 - gap)} L ${p(r0, a1 - gap)} A ${r0} ${r0} 0 ${large} 0 ${p(r0, a0 + gap)} Z`;
    const leader = leaderNode(route);
    const path = el("svg:path", { d, fill: colour(leader), class: "shard", "data-shard": route.shard.shard_id, "data-leader": leader || "" });
    path.appendChild(el("svg:title", {}, `shard ${route.shard.shard_id}, slots ${route.shard.start_slot}-${route.shard.end_slot - 1}, leader ${leader ? "node " + leader : "none"}, epoch ${route.shard.epoch}`));
    svg.appendChild(path);
    (route.shard.replicas || []).forEach((r, j) => {
      const a = (a0 + a1) / 2, rr = 185 + j * 9;
      svg.appendChild(el("svg:circle", { cx: (rr * Math.cos(a)).toFixed(2), cy: (rr * Math.sin(a)).toFixed(2), r: 3, fill: colour(r.node_id),
        opacity: r.role === "REPLICA_ROLE_LEARNER" ? 0.4 : 1 }));
    });
  });
  svg.appendChild(el("svg:text", { x: 0, y: -4, "text-anchor": "middle", "font-size": 22 }, `${n} shards`));
  svg.appendChild(el("svg:text", { x: 0, y: 20, "text-anchor": "middle", "font-size": 13, fill: "#6b7785" }, `${(st.nodes || []).length} nodes`));
  const legend = document.getElementById("legend");
  legend.replaceChildren();
  for (const nd of st.nodes || []) {
    const s = el("span");
    s.appendChild(el("span", { class: "swatch", style: `background:${colour(nd.id)}` }));
    s.appendChild(document.createTextNode(`node ${nd.id}`));
    legend.appendChild(s);
  }
}

function drawNodes(st) {
  const replicas = {}, leaders = {};
  for (const route of (st.routes && st.routes.shards) || []) {
    for (const r of route.shard.replicas || []) replicas[r.node_id] = (replicas[r.node_id] || 0) + 1;
    const l = leaderNode(route);
    if (l) leaders[l] = (leaders[l] || 0) + 1;
  }
  const body = document.querySelector("#nodes tbody");
  body.replaceChildren();
  for (const nd of st.nodes || []) {
    const tr = el("tr", { class: "node state-" + state(nd.state), "data-node": nd.id, "data-state": state(nd.state) });
    const sw = el("td");
    sw.appendChild(el("span", { class: "swatch", style: `background:${colour(nd.id)}` }));
    sw.appendChild(document.createTextNode(nd.id));
    tr.appendChild(sw);
    tr.appendChild(el("td", {}, nd.addr));
    tr.appendChild(el("td", {}, nd.zone || "-"));
    tr.appendChild(el("td", { class: "num" }, nd.weight));
    const stTd = el("td", { class: "state" }, state(nd.state));
    if (nd.state_reason) stTd.title = nd.state_reason;
    tr.appendChild(stTd);
    tr.appendChild(el("td", { class: "num" }, replicas[nd.id] || 0));
    tr.appendChild(el("td", { class: "num" }, leaders[nd.id] || 0));
    tr.appendChild(el("td", { class: "num" }, Math.round((st.node_ops_per_sec || {})[nd.id] || 0)));
    body.appendChild(tr);
  }
}

function drawOperators(st) {
  document.getElementById("paused").textContent = st.scheduling_paused ? "(automatic scheduling paused)" : "";
  const box = document.getElementById("operators");
  box.replaceChildren();
  const ops = st.operators || [];
  if (!ops.length) { box.appendChild(el("div", { class: "muted" }, "none in flight")); return; }
  for (const op of ops) {
    const d = el("div", { class: "op", "data-op": op.id });
    const steps = (op.steps || []).length;
    d.appendChild(el("div", {}, `#${op.id} shard ${op.shard_id} · ${kind(op.kind)} · step ${Math.min((op.current || 0) + 1, steps)}/${steps}${op.rolling_back ? " · rolling back" : ""}`));
    d.appendChild(el("div", { class: "muted" }, op.reason || ""));
    const total = Number(op.total_bytes || 0), done = Number(op.progress_bytes || 0);
    const pct = total > 0 ? Math.min(100, (100 * done) / total) : (100 * (op.current || 0)) / Math.max(steps, 1);
    const bar = el("div", { class: "bar" });
    bar.appendChild(el("div", { style: `width:${pct.toFixed(1)}%` }));
    d.appendChild(bar);
    if (op.eta_ms) d.appendChild(el("div", { class: "muted" }, `ETA ${(Number(op.eta_ms) / 1000).toFixed(0)} s`));
    box.appendChild(d);
  }
}

function drawChart(st) {
  history.push(st.ops_per_sec || 0);
  while (history.length > 120) history.shift();
  document.getElementById("ops").textContent = `${Math.round(st.ops_per_sec || 0)} ops/s`;
  const svg = document.getElementById("chart");
  svg.replaceChildren();
  const max = Math.max(1, ...history);
  const pts = history.map((v, i) => `${(i * 400) / 119},${(115 - (v / max) * 105).toFixed(1)}`).join(" ");
  svg.appendChild(el("svg:polyline", { points: pts, fill: "none", stroke: "#0f3d5e", "stroke-width": 2 }));
  svg.appendChild(el("svg:text", { x: 4, y: 12, "font-size": 10, fill: "#6b7785" }, `max ${Math.round(max)} ops/s, last 2 min`));
}

async function tick() {
  try {
    const resp = await fetch("../status", { cache: "no-store" });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const st = await resp.json();
    const c = st.cluster;
    document.getElementById("cluster").textContent = c ? `cluster ${c.cluster_id} · ${c.shards} shards × ${c.replicas}` : "not bootstrapped";
    drawRing(st);
    drawNodes(st);
    drawOperators(st);
    drawChart(st);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.ready = "1";
  } catch (e) {
    document.getElementById("updated").textContent = "cannot reach the master: " + e.message;
  }
}

tick();
setInterval(tick, 1000);
