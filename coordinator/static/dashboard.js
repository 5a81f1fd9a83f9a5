// edge-infer dashboard: polls /api/status every 2 s and draws the cluster, the plan, the nodes and the recent jobs;
// a chat box streams replies from /v1/chat/completions (server-sent events read from a fetch body).
// Deep link: /#ask=TEXT[&max_tokens=N][&temperature=T] fills the chat box and sends it once on load.
// Everything the server sends is inserted as text (textContent / SVG text nodes), never as HTML.
"use strict";

const POLL_MS = 2000;
const KEY_STORE = "edge-infer.api-key";
const STAGE_COLORS = 8; // --stage-1 … --stage-8 in dashboard.css
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
const state = {
  apiKey: localStorage.getItem(KEY_STORE) || "",
  status: null,
  rendered: {}, // section -> JSON of what it last drew (redraw only on change)
  firstStatus: null, // resolves after the first /api/status answer (or failure)
  chat: { messages: [], busy: false, abort: null, replies: 0 },
  replica: 0, // the replica whose plan the plan card and the pipeline arrows show
};

// ---------------------------------------------------------------------------------------------------------------
// Formatting

const dash = "–";
const fmt = {
  range: (r) => (Array.isArray(r) ? `${r[0]}${dash}${r[1]}` : "—"),
  int: (n) => (n == null ? "—" : Math.round(n).toLocaleString("en-US")),
  num(n, digits = 1) {
    if (n == null || !isFinite(n)) return "—";
    return n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  },
  bytes(b) {
    if (b == null) return "—";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (b >= 1000 && i < units.length - 1) { b /= 1000; i++; }
    return `${b.toFixed(b < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
  },
  ms(v) {
    if (v == null || !isFinite(v)) return "—";
    if (v >= 10000) return `${(v / 1000).toFixed(0)} s`;
    if (v >= 1000) return `${(v / 1000).toFixed(1)} s`;
    return `${v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)} ms`;
  },
  // Link bandwidth: the status gives MB/s (megabytes, like the planner).
  mbps(v) {
    if (v == null || !isFinite(v)) return "—";
    return v >= 1000 ? `${(v / 1000).toFixed(v >= 10000 ? 0 : 1)} GB/s` : `${v.toFixed(v < 10 ? 1 : 0)} MB/s`;
  },
  duration(s) {
    if (s == null) return "—";
    s = Math.max(0, Math.floor(s));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  },
  ago(unix) {
    if (unix == null) return "—";
    return fmt.duration(Date.now() / 1000 - unix);
  },
  shortId: (id) => (id && id.length > 12 ? `${id.slice(0, 4)}…${id.slice(-6)}` : id || "?"),
};

/** Element helper: el("td", {class: "num", title: "…"}, "text", child, …). Strings become text nodes. */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "style") Object.assign(e.style, v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) if (c != null) e.append(c instanceof Node ? c : String(c));
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) e.setAttribute(k, v);
  for (const c of children.flat(Infinity)) if (c != null) e.append(c instanceof Node ? c : String(c));
  return e;
}

const stageClass = (i) => `stage-${(i % STAGE_COLORS) + 1}`;

/** Redraws a section only when its data changed (keeps hover states and text selections stable). */
function changed(section, data) {
  const json = JSON.stringify(data);
  if (state.rendered[section] === json) return false;
  state.rendered[section] = json;
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Server access and the API key

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.apiKey) headers.set("Authorization", `Bearer ${state.apiKey}`);
  const res = await fetch(path, { ...options, headers, cache: "no-store" });
  if (res.status === 401) {
    showKeyBar(state.apiKey ? "The server refused this API key." : "This server asks for an API key.");
    throw new Unauthorized("unauthorized: set the API key");
  }
  return res;
}

function showKeyBar(message) {
  $("key-msg").textContent = message;
  $("keybar").hidden = false;
  $("key-input").value = state.apiKey;
  setConn("locked", "API key needed");
}

function setupKeyBar() {
  $("key-toggle").addEventListener("click", () => {
    const bar = $("keybar");
    bar.hidden = !bar.hidden;
    if (!bar.hidden) {
      $("key-msg").textContent = state.apiKey ? "An API key is set." : "No API key set.";
      $("key-input").value = state.apiKey;
      $("key-input").focus();
    }
  });
  $("keybar").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.apiKey = $("key-input").value.trim();
    if (state.apiKey) localStorage.setItem(KEY_STORE, state.apiKey);
    else localStorage.removeItem(KEY_STORE);
    $("keybar").hidden = true;
    poll();
  });
  $("key-clear").addEventListener("click", () => {
    state.apiKey = "";
    localStorage.removeItem(KEY_STORE);
    $("key-input").value = "";
    $("key-msg").textContent = "API key forgotten.";
    poll();
  });
}

function setConn(kind, text) {
  $("conn-dot").className = `dot ${kind}`;
  $("conn-text").textContent = text;
}

// ---------------------------------------------------------------------------------------------------------------
// Polling

let pollTimer = null;
let pollSeq = 0;

async function poll() {
  clearTimeout(pollTimer);
  const seq = ++pollSeq;
  // A hidden tab does not poll (it catches up when shown again), unless nothing was shown yet.
  if (document.hidden && state.status) {
    pollTimer = setTimeout(poll, POLL_MS);
    return;
  }
  try {
    const res = await api("api/status");
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const status = await res.json();
    if (seq !== pollSeq) return; // a newer poll started meanwhile
    state.status = status;
    render(status);
    setConn("live", "live");
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (!(e instanceof Unauthorized)) setConn("stale", `no status: ${e.message}`);
  } finally {
    if (seq === pollSeq) pollTimer = setTimeout(poll, POLL_MS);
  }
}

function render(s) {
  renderHeader(s);
  renderTopology(s);
  renderPlan(s);
  renderNodes(s);
  renderJobs(s);
}

// ---------------------------------------------------------------------------------------------------------------
// Header

function renderHeader(s) {
  const m = s.model || {};
  $("model-id").textContent = m.id || "?";
  $("model-meta").textContent = [m.arch, m.layers != null && `${m.layers} layers`, m.context != null && `ctx ${fmt.int(m.context)}`]
    .filter(Boolean)
    .join(" · ");
  const t = s.totals || {};
  const box = $("totals");
  box.replaceChildren(
    el("span", {}, el("b", {}, fmt.int(t.requests)), " requests"),
    el("span", {}, el("b", {}, fmt.int(t.completion_tokens)), " tokens"),
    el("span", {}, "up ", el("b", {}, fmt.duration(t.uptime_s))),
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Plan helpers

/** Every replica's plan (null while it has none); with one replica, just the plan. */
function plans(s) {
  const reps = s.replicas || [];
  return reps.length > 1 ? reps.map((r) => r.plan) : [s.plan];
}

/** The plan of the replica the plan card shows. */
function shownPlan(s) {
  const all = plans(s);
  return all[Math.min(state.replica, all.length - 1)] || null;
}

/** peer id -> [{replica, stage index, member index, members of the stage, member}] for every place the node has
 *  in a replica's plan. */
function placements(s) {
  const map = new Map();
  plans(s).forEach((plan, ri) =>
    (plan?.stages || []).forEach((st, si) =>
      (st.members || []).forEach((m, mi) => {
        if (!map.has(m.node)) map.set(m.node, []);
        const of = st.members.length;
        map.get(m.node).push({ replica: ri, sequences: plan.sequences, stage: si, member: mi, tp: of > 1, of, m });
      }),
    ),
  );
  return map;
}

/** A place as text: "stage 2", "stage 1 (2/3)" for a tensor-parallel member, prefixed "r2 " with replicas. */
function placeText(s, p) {
  const r = (s.replicas || []).length > 1 ? `r${p.replica + 1} ` : "";
  return `${r}stage ${p.stage + 1}${p.tp ? ` (${p.member + 1}/${p.of})` : ""}`;
}

function nodeName(s, peer) {
  const n = (s.nodes || []).find((x) => x.id === peer);
  return n ? n.name : fmt.shortId(peer);
}

// ---------------------------------------------------------------------------------------------------------------
// Topology: the coordinator on the left, the nodes on an arc around it, edges labeled with rtt and bandwidth,
// dashed arrows for the pipeline (stage leader to stage leader, the last back to the first).

function renderTopology(s) {
  const nodes = s.nodes || [];
  const plan = shownPlan(s);
  const place = placements(s);
  // Nodes in plan order (replica, stage, member), then the ones no plan uses.
  const order = [...nodes].sort((a, b) => rank(a) - rank(b) || a.name.localeCompare(b.name));
  function rank(n) {
    const p = place.get(n.id);
    return p ? p[0].replica * 1e6 + p[0].stage * 1000 + p[0].member : 1e9;
  }
  const data = order.map((n) => [n.id, n.name, n.backend, n.alive, n.active_sequences, round(n.tokens_per_s, 1),
    round(n.rtt_ms, 2), round(n.bandwidth_mbps, 0), place.get(n.id)?.map((p) => [p.replica, p.stage])]);
  const hops = (plan?.stages || []).map((st) => st.members?.[0]?.node);
  const requests = s.totals?.requests;
  if (!changed("topology", [data, hops, requests])) return;

  const used = order.filter((n) => place.has(n.id)).length;
  const reps = (s.replicas || []).length;
  $("topology-sub").textContent = `${nodes.length} node${nodes.length === 1 ? "" : "s"}, ${used} in ` +
    (reps > 1 ? `${reps} replicas (arrows: replica ${Math.min(state.replica, reps - 1) + 1})` : "the plan");

  const W = 760, boxW = 196, boxH = 58;
  const n = order.length;
  const rowGap = 72;
  const H = Math.max(220, n * rowGap + 30);
  const cx = 92, cy = H / 2;
  const right = W - boxW - 70; // x of a node box's left edge at the middle of the arc
  const pos = new Map();
  order.forEach((node, i) => {
    const t = n === 1 ? 0 : (i / (n - 1)) * 2 - 1; // -1 … 1 from top to bottom
    const y = cy - boxH / 2 + t * (H / 2 - boxH / 2 - 12);
    const x = right - 110 * t * t; // an arc around the coordinator
    pos.set(node.id, { x, y });
  });

  const root = $("topology");
  root.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const defs = svg("defs", {},
    svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" },
      svg("path", { d: "M0,0 L10,5 L0,10 z", class: "hop-head" })));
  const edges = svg("g", {});
  const labels = svg("g", {});
  const hopLayer = svg("g", {});
  const boxes = svg("g", {});

  // Coordinator.
  const coord = svg("g", {},
    svg("rect", { x: cx - 62, y: cy - 30, width: 124, height: 60, rx: 12, class: "coord-box" }),
    svg("text", { x: cx, y: cy - 6, "text-anchor": "middle", class: "name" }, "coordinator"),
    svg("text", { x: cx, y: cy + 13, "text-anchor": "middle", class: "muted" },
      requests != null ? `${fmt.int(requests)} request${requests === 1 ? "" : "s"}` : ""));

  for (const node of order) {
    const p = pos.get(node.id);
    const x1 = cx + 62, y1 = cy, x2 = p.x, y2 = p.y + boxH / 2;
    // Thicker edges for faster links (log scale: 1 MB/s -> 1 px, 10 GB/s -> 5 px).
    const bw = node.bandwidth_mbps;
    const width = bw ? Math.max(1, Math.min(5, 1 + Math.log10(Math.max(1, bw)))) : 1;
    edges.append(svg("line", { x1, y1, x2, y2, class: `edge${node.alive ? "" : " dead"}`, "stroke-width": width.toFixed(2) }));
    // Label at 58% of the way to the node, on a pill.
    const lx = x1 + (x2 - x1) * 0.58, ly = y1 + (y2 - y1) * 0.58;
    const text = node.rtt_ms == null && bw == null ? "not measured" : `${fmt.ms(node.rtt_ms)} · ${fmt.mbps(bw)}`;
    const w = text.length * 6.7 + 12;
    labels.append(svg("g", { class: node.alive ? "" : "dead" },
      svg("title", {}, `link to ${node.name}: round trip ${fmt.ms(node.rtt_ms)}, bandwidth ${fmt.mbps(bw)}`),
      svg("rect", { x: lx - w / 2, y: ly - 10, width: w, height: 20, rx: 10, class: "pill" }),
      svg("text", { x: lx, y: ly + 4, "text-anchor": "middle", class: "pill-text" }, text)));

    const stages = place.get(node.id) || [];
    const g = svg("g", { class: node.alive ? "" : "dead" });
    g.append(svg("title", {}, `${node.id}\n${node.adapter} (${node.backend})\nmemory ${fmt.bytes(node.memory_bytes)}, GEMV ${fmt.num(node.gemv_gbps)} GB/s, batched rows ${fmt.num(node.row_gmacs)} G MAC/s`));
    g.append(svg("rect", { x: p.x, y: p.y, width: boxW, height: boxH, rx: 9, class: "box" }));
    // Stage color stripe(s) on the left edge.
    if (stages.length) {
      const h = boxH / stages.length;
      stages.forEach((st, k) => g.append(svg("rect", {
        x: p.x, y: p.y + k * h, width: 7, height: h, class: `fill-${stageClass(st.stage)}`,
      })));
    }
    const stageText = stages.length ? stages.map((p) => placeText(s, p)).join(", ") : "idle";
    g.append(svg("text", { x: p.x + 16, y: p.y + 19, class: "name" }, node.name));
    g.append(svg("text", { x: p.x + boxW - 10, y: p.y + 19, "text-anchor": "end", class: "muted" }, node.alive ? node.backend : "offline"));
    g.append(svg("text", { x: p.x + 16, y: p.y + 36, class: "muted" }, stageText));
    // Load: active sequences and tok/s.
    const seqs = node.active_sequences || 0;
    g.append(svg("text", { x: p.x + 16, y: p.y + 51 },
      `${seqs} seq · ${fmt.num(node.tokens_per_s)} tok/s`));
    const lw = 44, lf = Math.min(1, seqs / Math.max(1, stages[0]?.sequences || 1));
    g.append(svg("rect", { x: p.x + boxW - 10 - lw, y: p.y + 44, width: lw, height: 6, rx: 3, class: "load-bg" }));
    if (lf > 0) g.append(svg("rect", { x: p.x + boxW - 10 - lw, y: p.y + 44, width: lw * lf, height: 6, rx: 3, class: "load-fg" }));
    boxes.append(g);
  }

  // Pipeline hops between consecutive stage leaders (bulging to the right of the boxes), last back to first.
  const leaders = hops.filter((h) => h && pos.has(h));
  if (leaders.length > 1) {
    for (let i = 0; i < leaders.length; i++) {
      const a = pos.get(leaders[i]), b = pos.get(leaders[(i + 1) % leaders.length]);
      const ax = a.x + boxW, ay = a.y + boxH / 2 + (i === leaders.length - 1 ? 8 : -8);
      const bx = b.x + boxW, by = b.y + boxH / 2 + (i === leaders.length - 1 ? 8 : -8);
      const bulge = 24 + Math.abs(by - ay) * 0.16 + (i === leaders.length - 1 ? 22 : 0);
      hopLayer.append(svg("path", {
        d: `M${ax},${ay} C${ax + bulge},${ay} ${bx + bulge},${by} ${bx + 2},${by}`,
        class: "hop", "marker-end": "url(#arrow)",
      }, svg("title", {}, `pipeline: stage ${i + 1} → stage ${((i + 1) % leaders.length) + 1}`)));
    }
  }

  if (!n) {
    labels.append(svg("text", { x: W / 2, y: cy + 4, "text-anchor": "middle", class: "muted" }, "no nodes yet"));
  }
  root.replaceChildren(defs, edges, hopLayer, coord, boxes, labels);
}

function round(v, digits) {
  if (v == null) return v;
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

// ---------------------------------------------------------------------------------------------------------------
// Plan: one horizontal bar of the model's layers, a segment per stage (its width proportional to its layers);
// a tensor-parallel stage is split into one row per member.

/** With several replicas: one button each (its load, or why it has no plan) choosing the plan shown. */
function renderReplicas(s) {
  const reps = s.replicas || [];
  const shown = Math.min(state.replica, Math.max(0, reps.length - 1));
  if (!changed("replicas", [reps.map((r) => [r.plan?.id, r.running, r.queued, r.unavailable]), shown])) return;
  const box = $("replicas");
  box.hidden = reps.length < 2;
  box.replaceChildren(...(reps.length < 2 ? [] : reps.map((r, i) => {
    const what = r.plan
      ? `${r.plan.stages.length} stage${r.plan.stages.length === 1 ? "" : "s"} · ${r.running} running · ${r.queued} waiting`
      : r.unavailable ? "unavailable" : "re-planning";
    const b = el("button", { type: "button", class: `small${i === shown ? "" : " ghost"}`, title: r.unavailable || null },
      `replica ${i + 1}: ${what}`);
    b.addEventListener("click", () => {
      state.replica = i;
      if (state.status) render(state.status);
    });
    return b;
  })));
}

function renderPlan(s) {
  renderReplicas(s);
  const plan = shownPlan(s);
  const layers = s.model?.layers || 0;
  if (!changed("plan", [plan, layers, (s.nodes || []).map((n) => [n.id, n.name])])) return;
  const bar = $("planbar"), ruler = $("ruler"), list = $("stages");
  if (!plan || !plan.stages?.length) {
    $("plan-sub").textContent = (s.replicas || []).length > 1 ? "this replica has no plan now" : "no plan yet";
    bar.replaceChildren();
    ruler.replaceChildren();
    list.replaceChildren();
    return;
  }
  const total = layers || Math.max(...plan.stages.map((st) => st.layers[1]));
  $("plan-sub").textContent =
    `${plan.stages.length} stage${plan.stages.length === 1 ? "" : "s"} · predicted ${fmt.num(plan.predicted_tokens_per_s)} tok/s` +
    ` · ${plan.sequences} sequence${plan.sequences === 1 ? "" : "s"} · ${fmt.shortId(plan.id)}`;
  $("plan-sub").title = `plan ${plan.id}`;

  bar.replaceChildren(...plan.stages.map((st, i) => {
    const [a, b] = st.layers;
    const members = st.members || [];
    const tp = members.length > 1;
    const seg = el("div", { class: "seg", title: `stage ${i + 1}: layers ${a}${dash}${b} (${b - a})`, "data-stage": i + 1 });
    seg.style.flex = `${Math.max(1, b - a)} 1 0`;
    members.forEach((m, k) => {
      const row = el("div", { class: `row ${stageClass(i)}${tp ? " tp" : ""}` });
      if (k === 0) row.append(el("b", {}, `stage ${i + 1}`), el("span", { class: "range" }, `${a}${dash}${b}`));
      row.append(el("span", { class: "who" }, `${k === 0 ? "· " : ""}${nodeName(s, m.node)}`));
      if (tp) {
        const parts = [];
        if (m.q_heads) parts.push(`q ${fmt.range(m.q_heads)}`);
        else if (m.kv_heads) parts.push(`kv ${fmt.range(m.kv_heads)}`);
        if (m.ffn) parts.push(`ffn ${fmt.range(m.ffn)}`);
        row.append(el("span", { class: "split" }, parts.join(" · ")));
      }
      seg.append(row);
    });
    if (!members.length) seg.append(el("div", { class: `row ${stageClass(i)}` }, `${a}${dash}${b}`));
    if (st.embed) seg.append(el("span", { class: "tag embed", title: "holds the token embedding" }, "emb"));
    if (st.head) seg.append(el("span", { class: "tag head", title: "holds the output head (samples)" }, "head"));
    return seg;
  }));

  // Ruler: the layer index at every stage boundary.
  const cuts = [0, ...plan.stages.map((st) => st.layers[1])];
  ruler.replaceChildren(...[...new Set(cuts)].map((c) => {
    const e = el("span", {}, String(c));
    e.style.left = `${(100 * c) / total}%`;
    return e;
  }));

  // One line per stage: color, layers, members (with their split), predicted compute per token.
  const rows = [];
  plan.stages.forEach((st, i) => {
    const sw = el("span", { class: `swatch ${stageClass(i)}` });
    const who = (st.members || []).map((m) => {
      const heads = m.q_heads ? `q ${fmt.range(m.q_heads)}` : m.kv_heads && `kv ${fmt.range(m.kv_heads)}`;
      const split = [heads, m.ffn && `ffn ${fmt.range(m.ffn)}`].filter(Boolean).join(", ");
      return nodeName(s, m.node) + (split && st.members.length > 1 ? ` (${split})` : "");
    }).join(" + ");
    const extras = [st.embed && "embedding", st.head && "head"].filter(Boolean).join(", ");
    rows.push(
      el("span", {}, sw, `stage ${i + 1}`),
      el("span", { class: "range" }, `layers ${st.layers[0]}${dash}${st.layers[1]}`),
      el("span", { class: "who", title: who }, who + (extras ? ` · ${extras}` : "")),
      el("span", { class: "num", title: "predicted compute per token" }, fmt.ms(st.predicted_us / 1000)),
    );
  });
  list.replaceChildren(...rows);
}

// ---------------------------------------------------------------------------------------------------------------
// Nodes table

function renderNodes(s) {
  const nodes = s.nodes || [];
  const place = placements(s);
  if (!changed("nodes", [nodes, plans(s).map((p) => [p?.id, p?.sequences])])) return;
  const replicas = (s.replicas || []).length > 1;
  const rows = nodes.map((n) => {
    const stages = place.get(n.id) || [];
    const stageCell = stages.length
      ? stages.map((p) => [el("span", { class: `swatch ${stageClass(p.stage)}` }),
        `${replicas ? `r${p.replica + 1}·` : ""}${p.stage + 1}`, " "])
      : el("span", { class: "sub" }, "—");
    const cap = Math.max(1, stages[0]?.sequences || 1);
    const meter = el("span", { class: "meter" }, el("i", {}));
    meter.firstChild.style.width = `${Math.min(100, (100 * (n.active_sequences || 0)) / cap)}%`;
    return el("tr", { class: n.alive ? "" : "dead", title: n.id },
      el("td", {}, el("b", {}, n.name), " ", el("span", { class: `pillbox ${n.alive ? "st-alive" : "st-dead"}` }, n.alive ? "up" : "down")),
      el("td", {}, stageCell),
      el("td", { title: n.adapter }, n.backend),
      el("td", { class: "num" }, fmt.bytes(n.memory_bytes)),
      el("td", { class: "num" }, `${fmt.num(n.gemv_gbps)} GB/s`),
      el("td", { class: "num", title: "round trip · bandwidth" }, `${fmt.ms(n.rtt_ms)} · ${fmt.mbps(n.bandwidth_mbps)}`),
      el("td", {}, meter, `${n.active_sequences ?? 0} seq`),
      el("td", { class: "num" }, fmt.num(n.tokens_per_s)),
    );
  });
  $("nodes").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 8, class: "sub" }, "no nodes"))]));
}

// ---------------------------------------------------------------------------------------------------------------
// Jobs table (newest first)

function renderJobs(s) {
  const jobs = [...(s.jobs || [])].sort((a, b) => (b.created || 0) - (a.created || 0)).slice(0, 15);
  // Redrawn on every poll: the ages change.
  $("jobs-sub").textContent = s.jobs?.length ? `${s.jobs.length} kept` : "";
  const rows = [];
  for (const j of jobs) {
    const on = (s.replicas || []).length > 1 ? `, replica ${(j.replica ?? 0) + 1}` : "";
    rows.push(el("tr", { title: `${j.id} (${j.kind}${on})` },
      el("td", { class: "mono" }, fmt.shortId(j.id)),
      el("td", { title: j.finish_reason ? `finish: ${j.finish_reason}` : null },
        el("span", { class: `pillbox st-${j.state}` }, j.state)),
      el("td", { class: "num" }, `${fmt.int(j.prompt_tokens)} → ${fmt.int(j.completion_tokens)}`),
      el("td", { class: "num" }, fmt.num(j.tokens_per_s)),
      el("td", { class: "num" }, fmt.ms(j.first_token_ms)),
      el("td", { class: "num" }, fmt.ago(j.created)),
    ));
    if (j.error) rows.push(el("tr", { class: "err" }, el("td", { colspan: 6 }, j.error)));
  }
  $("jobs").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6, class: "sub" }, "no jobs yet"))]));
}

// ---------------------------------------------------------------------------------------------------------------
// Chat: POST /v1/chat/completions with stream:true, read the body as server-sent events.

function addMessage(role, text) {
  $("chat-empty").hidden = true;
  const textEl = el("div", { class: "text" }, text);
  const meta = el("div", { class: "meta" });
  const box = el("div", { class: `msg ${role}` }, el("div", { class: "who" }, role === "user" ? "you" : "model"), textEl, meta);
  $("messages").append(box);
  box.scrollIntoView({ block: "end" });
  return { box, textEl, meta };
}

async function send(text, opts = {}) {
  text = text.trim();
  if (!text || state.chat.busy) return;
  const chat = state.chat;
  const maxTokens = Number(opts.max_tokens ?? $("max-tokens").value) || 128;
  const temperature = Number(opts.temperature ?? $("temperature").value) || 0;
  await state.firstStatus; // the model id comes with the first status
  chat.busy = true;
  setSending(true);
  $("chat-input").value = "";
  addMessage("user", text);
  chat.messages.push({ role: "user", content: text });
  const reply = addMessage("assistant", "");
  const n = ++chat.replies;
  reply.textEl.dataset.reply = String(n);
  reply.textEl.dataset.state = "streaming";
  chat.abort = new AbortController();
  const started = performance.now();
  let firstAt = null, chunks = 0, finish = null, content = "", usage = null;
  try {
    const body = {
      model: await modelId(),
      messages: chat.messages,
      max_tokens: maxTokens,
      temperature,
      stream: true,
      stream_options: { include_usage: true },
    };
    const res = await api("v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(body),
      signal: chat.abort.signal,
    });
    if (!res.ok) throw new Error(await errorText(res));
    for await (const data of sseEvents(res)) {
      if (data === "[DONE]") break;
      let ev;
      try { ev = JSON.parse(data); } catch { continue; }
      if (ev.error) throw new Error(ev.error.message || JSON.stringify(ev.error));
      if (ev.id) reply.box.dataset.job = ev.id;
      if (ev.usage) usage = ev.usage;
      const choice = ev.choices?.[0];
      const delta = choice?.delta?.content ?? choice?.text ?? "";
      if (delta) {
        if (firstAt == null) firstAt = performance.now();
        chunks++;
        content += delta;
        reply.textEl.textContent = content;
        reply.box.scrollIntoView({ block: "end" });
      }
      if (choice?.finish_reason) finish = choice.finish_reason;
    }
    reply.textEl.dataset.state = "done";
    const secs = (performance.now() - started) / 1000;
    const tokens = usage?.completion_tokens;
    const decodeSecs = firstAt != null ? (performance.now() - firstAt) / 1000 : 0;
    const n = tokens ?? chunks; // a chunk is about a token
    const rate = n > 1 && decodeSecs > 0 ? (n - 1) / decodeSecs : null;
    reply.meta.textContent = [
      firstAt != null && `first token ${fmt.ms(firstAt - started)}`,
      tokens != null ? `${tokens} token${tokens === 1 ? "" : "s"} in ${secs.toFixed(1)} s` : `${secs.toFixed(1)} s`,
      rate && `${fmt.num(rate)} tok/s`,
      finish && `finish: ${finish}`,
    ].filter(Boolean).join(" · ");
    chat.messages.push({ role: "assistant", content });
  } catch (e) {
    const aborted = e.name === "AbortError";
    reply.textEl.dataset.state = aborted ? "done" : "failed";
    if (!aborted) reply.textEl.textContent = content ? `${content}\n[${e.message}]` : e.message;
    reply.meta.textContent = aborted ? "stopped" : "failed";
    if (aborted && content) chat.messages.push({ role: "assistant", content });
    else chat.messages.pop(); // forget the unanswered question (it can be sent again)
    if (e instanceof Unauthorized) $("chat-input").value = text;
  } finally {
    chat.busy = false;
    chat.abort = null;
    setSending(false);
    poll(); // show the job right away
  }
}

/** The model the API serves: from the status, else from /v1/models. */
async function modelId() {
  if (state.status?.model?.id) return state.status.model.id;
  const res = await api("v1/models");
  if (!res.ok) throw new Error(await errorText(res));
  const id = (await res.json()).data?.[0]?.id;
  if (!id) throw new Error("the server lists no model");
  return id;
}

async function errorText(res) {
  const raw = await res.text().catch(() => "");
  try {
    const j = JSON.parse(raw);
    return `HTTP ${res.status}: ${j.error?.message || j.message || raw}`;
  } catch {
    return `HTTP ${res.status}${raw ? `: ${raw.slice(0, 300)}` : ""}`;
  }
}

/** The `data:` payloads of a text/event-stream response, one per event, as they arrive. */
async function* sseEvents(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    buf += done ? decoder.decode() : decoder.decode(value, { stream: true });
    buf = buf.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(l[5] === " " ? 6 : 5));
      if (data.length) yield data.join("\n");
    }
    if (done) {
      const rest = buf.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(l[5] === " " ? 6 : 5));
      if (rest.length) yield rest.join("\n");
      return;
    }
  }
}

function setSending(busy) {
  const b = $("chat-send");
  b.textContent = busy ? "Stop" : "Send";
  b.classList.toggle("stop", busy);
}

function setupChat() {
  $("chat-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (state.chat.busy) state.chat.abort?.abort();
    else send($("chat-input").value);
  });
  $("chat-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      if (!state.chat.busy) send($("chat-input").value);
    }
  });
  $("chat-clear").addEventListener("click", () => {
    state.chat.abort?.abort();
    state.chat.messages = [];
    $("messages").replaceChildren($("chat-empty"));
    $("chat-empty").hidden = false;
  });
}

/** `#ask=TEXT[&max_tokens=N][&temperature=T]`: fill the chat box and send it once (the hash is then removed). */
function deepLink() {
  const hash = location.hash.replace(/^#/, "");
  if (!hash) return;
  const p = new URLSearchParams(hash);
  const ask = p.get("ask");
  if (ask == null) return;
  history.replaceState(null, "", location.pathname + location.search);
  const opts = {};
  if (p.has("max_tokens")) $("max-tokens").value = opts.max_tokens = Number(p.get("max_tokens"));
  if (p.has("temperature")) $("temperature").value = opts.temperature = Number(p.get("temperature"));
  $("chat-input").value = ask;
  send(ask, opts);
}

// ---------------------------------------------------------------------------------------------------------------

function start() {
  setupKeyBar();
  setupChat();
  state.firstStatus = poll();
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) poll();
  });
  deepLink();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
