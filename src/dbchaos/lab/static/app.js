// dbchaos lab dashboard: vanilla JS, no framework, no network beyond this server.
// Everything shown comes from /lab/api/* and /v1/*; text from the database (queries,
// application names) is always inserted as text, never as HTML.
"use strict";

const TARGET = "shop";
const WINDOW_S = 180;

// ------------------------------------------------------------------ helpers
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const $ = (id) => document.getElementById(id);

class HttpError extends Error {
  constructor(status, body) {
    const detail = body && typeof body === "object" && body.detail ? body.detail : `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.body = body;
  }
}

async function api(path, options = {}) {
  const init = { method: options.method || "GET", headers: { Accept: "application/json" } };
  if (options.body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    banner("The lab server does not answer. Was it stopped (Ctrl-C)? Start it again with: dbchaos lab");
    throw new Error("the lab server does not answer");
  }
  banner(null);
  let body = null;
  const text = await res.text();
  if (text) {
    try { body = JSON.parse(text); } catch (_) { body = { detail: text.slice(0, 300) }; }
  }
  if (!res.ok) throw new HttpError(res.status, body);
  return body;
}

function banner(message) {
  const el = $("banner");
  if (!message) { el.hidden = true; el.textContent = ""; return; }
  el.textContent = message;
  el.hidden = false;
}

function showError(id, err) {
  const el = $(id);
  if (!el) return;
  if (!err) { el.hidden = true; el.textContent = ""; return; }
  el.textContent = err instanceof Error ? err.message : String(err);
  el.hidden = false;
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}
function fmtS(s) {
  if (s === null || s === undefined) return "–";
  return s >= 100 ? `${Math.round(s)} s` : `${s.toFixed(1)} s`;
}
function fmtPct(rate) {
  if (rate === null || rate === undefined) return "–";
  return `${(rate * 100).toFixed(rate > 0 && rate < 0.1 ? 1 : 0)} %`;
}
function clock(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}
function shortId(id) { return id ? id.slice(0, 8) : ""; }

// Runs fn at most once at a time, every `every` ms, showing failures in `errorId`.
function poll(fn, every, errorId) {
  let busy = false;
  const tick = async () => {
    if (busy) return;
    busy = true;
    try { await fn(); showError(errorId, null); }
    catch (err) { showError(errorId, err); }
    finally { busy = false; }
  };
  tick();
  return setInterval(tick, every);
}

// ------------------------------------------------------------------ charts (SVG)
const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceMax(value, floor) {
  const v = Math.max(value || 0, floor);
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// series: [{values: [[t, v|null]...], cls}]; windows: [{start, end, kind}]; events: [{t, text}]
function drawChart(svg, { series, windows, events, now, floor, format }) {
  const W = 600, H = 170, L = 52, R = 8, T = 10, B = 22;
  const x0 = now - WINDOW_S;
  const x = (t) => L + ((t - x0) / WINDOW_S) * (W - L - R);
  let max = 0;
  for (const ser of series) for (const [, v] of ser.values) if (v !== null && v > max) max = v;
  const top = niceMax(max, floor);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const desc = svg.querySelector("desc");
  svg.replaceChildren(desc);
  for (const w of windows) {
    const a = Math.max(x(w.start), L), b = Math.min(x(w.end === null ? now : w.end), W - R);
    if (b <= L || a >= W - R) continue;
    svg.append(s("rect", { class: "fault", x: a, y: T, width: Math.max(b - a, 1), height: H - T - B }));
    svg.append(s("text", { class: "fault-label", x: a + 3, y: T + 11 }, w.kind));
  }
  for (const frac of [0, 0.5, 1]) {
    const v = top * frac;
    svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    svg.append(s("text", { class: "axis", x: L - 6, y: y(v) + 4, "text-anchor": "end" }, format(v)));
  }
  for (const offset of [WINDOW_S, 120, 60, 0]) {
    const t = now - offset;
    svg.append(s("text", { class: "axis", x: x(t), y: H - 6, "text-anchor": offset === 0 ? "end" : offset === WINDOW_S ? "start" : "middle" },
      offset === 0 ? "now" : `-${offset} s`));
  }
  for (const e of events) {
    if (e.t < x0) continue;
    const line = s("line", { class: "event", x1: x(e.t), x2: x(e.t), y1: T, y2: H - B });
    line.append(s("title", {}, `${clock(e.t)} ${e.text}`));
    svg.append(line);
  }
  for (const ser of series) {
    let d = "";
    let pen = false;
    for (const [t, v] of ser.values) {
      if (v === null || v === undefined || t < x0) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${x(t + 0.5).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    }
    if (d) svg.append(s("path", { class: `line ${ser.cls}`, d }));
  }
}

// ------------------------------------------------------------------ live traffic
const state = { faults: [], kinds: {}, scenarios: [], lastTraffic: null, mode: null };

async function refreshTraffic() {
  const data = await api(`/lab/api/traffic?window_s=${WINDOW_S}`);
  state.lastTraffic = data;
  const buckets = data.buckets;
  const now = data.now;
  const windows = data.faults;
  const events = data.events;
  const pick = (key, scale = 1) => buckets.map((b) => [b.t, b[key] === null ? null : b[key] * scale]);
  drawChart($("chart-p95").querySelector("svg"), {
    series: [{ values: pick("p95_ms"), cls: "p95" }], windows, events, now, floor: 50, format: (v) => fmtMs(v),
  });
  drawChart($("chart-throughput").querySelector("svg"), {
    series: [{ values: pick("ok"), cls: "ok" }, { values: pick("in_flight"), cls: "inflight" }],
    windows, events, now, floor: 10, format: (v) => `${Math.round(v)}`,
  });
  drawChart($("chart-errors").querySelector("svg"), {
    series: [{ values: pick("error_rate", 100), cls: "err" }], windows, events, now, floor: 10,
    format: (v) => `${Math.round(v)} %`,
  });
  drawChart($("chart-blocked").querySelector("svg"), {
    series: [{ values: pick("blocked"), cls: "blocked" }], windows, events, now, floor: 5,
    format: (v) => `${Math.round(v)}`,
  });

  const last = buckets.length ? buckets[buckets.length - 1] : null;
  const recent = buckets.filter((b) => b.t > now - 11);
  const maxOf = (key) => recent.reduce((m, b) => (b[key] !== null && b[key] > m ? b[key] : m), 0);
  $("now-p95").textContent = last ? fmtMs(last.p95_ms) : "–";
  $("now-throughput").textContent = last ? `${last.ok}/s` : "–";
  $("now-inflight").textContent = last && last.in_flight !== null ? `${last.in_flight}` : "–";
  $("now-errors").textContent = last ? fmtPct(last.error_rate) : "–";
  $("now-blocked").textContent = last && last.blocked !== null ? `${last.blocked}` : "–";
  $("now-connections").textContent = last && last.connections !== null ? `${last.connections} of ${last.max_connections}` : "–";
  // Values for people and for tests: the last complete second, and the worst of the last ten.
  const live = $("live");
  Object.assign(live.dataset, {
    t: last ? last.t : "",
    p95Ms: last && last.p95_ms !== null ? last.p95_ms : "",
    throughput: last ? last.ok : "",
    inFlight: last && last.in_flight !== null ? last.in_flight : "",
    errorRate: last && last.error_rate !== null ? last.error_rate : "",
    blocked: last && last.blocked !== null ? last.blocked : "",
    connections: last && last.connections !== null ? last.connections : "",
    maxErrorRate10s: maxOf("error_rate"),
    maxBlocked10s: maxOf("blocked"),
    activeFaults: windows.filter((w) => w.end === null).length,
    mode: data.mode,
  });

  const endpoints = {};
  const kinds = {};
  const details = {};
  for (const b of recent) {
    Object.assign(details, b.error_details || {});
    for (const [name, c] of Object.entries(b.endpoints)) {
      endpoints[name] = endpoints[name] || { requests: 0, errors: 0 };
      endpoints[name].requests += c.requests;
      endpoints[name].errors += c.errors;
    }
    for (const [k, n] of Object.entries(b.error_kinds)) kinds[k] = (kinds[k] || 0) + n;
  }
  const rows = Object.entries(endpoints).sort().map(([name, c]) =>
    h("tr", { class: c.errors ? "bad" : null }, h("td", {}, h("code", {}, name)), h("td", { text: c.requests }),
      h("td", { text: c.errors ? `${c.errors} (${Math.round((100 * c.errors) / c.requests)} %)` : "0" })));
  $("endpoints").tBodies[0].replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 3, text: data.traffic.running ? "no answers in the last 10 s" : "traffic is off (--no-traffic)" }))]));
  const kindItems = Object.entries(kinds).sort((a, b) => b[1] - a[1]).map(([k, n]) =>
    h("li", {}, h("strong", { text: n }), " ", explainErrorKind(k),
      details[k] ? h("div", { class: "muted" }, h("code", { text: details[k] })) : null));
  $("error-kinds").replaceChildren(...(kindItems.length ? kindItems : [h("li", { class: "ok-text", text: "none" })]));
  if (data.mode !== state.mode) setMode(data.mode);
}

function explainErrorKind(kind) {
  const known = {
    pool_timeout: "QueuePool limit reached: no pooled connection within pool_timeout",
    timeout: "client timeout: no answer within 10 s",
    connect: "connection refused: the shop is down or restarting",
    client_overload: "not sent: too many requests already waiting",
    sqlstate_55P03: "55P03 lock_not_available (lock_timeout)",
    sqlstate_57014: "57014 query_canceled (statement_timeout)",
    sqlstate_53300: "53300 too_many_connections",
    sqlstate_42703: "42703 undefined_column",
    sqlstate_42P01: "42P01 undefined_table",
    sqlstate_25P03: "25P03 idle_in_transaction_session_timeout",
    sqlstate_40P01: "40P01 deadlock_detected",
  };
  return h("span", {}, h("code", { text: kind }), known[kind] ? ` – ${known[kind]}` : "");
}

// ------------------------------------------------------------------ naive / hardened
const MODE_HELP = {
  naive: "Naive: SQLAlchemy's pool (5 + 10 overflow), no database timeouts; pool_timeout lowered to 5 s for the lab. Blocked queries wait as long as the lock lasts.",
  hardened: "Hardened: lock_timeout 500 ms, statement_timeout 2 s, idle_in_transaction_session_timeout 5 s, pool_timeout 1 s, and 503 + Retry-After on lock and pool errors.",
};

function setMode(mode) {
  state.mode = mode;
  for (const input of document.querySelectorAll("#mode-form input[name=mode]")) input.checked = input.value === mode;
  $("mode-help").textContent = MODE_HELP[mode] || "";
}

function initMode() {
  $("mode-form").addEventListener("change", async (ev) => {
    const mode = ev.target.value;
    const inputs = document.querySelectorAll("#mode-form input");
    inputs.forEach((i) => (i.disabled = true));
    try {
      const answer = await api("/lab/api/config", { method: "PUT", body: { mode } });
      setMode(answer.mode);
      showError("mode-error", null);
    } catch (err) {
      setMode(state.mode);
      showError("mode-error", err);
    } finally {
      inputs.forEach((i) => (i.disabled = false));
    }
  });
}

// ------------------------------------------------------------------ status bar
async function refreshStatus() {
  const st = await api("/lab/api/status");
  $("status-db").textContent = `PostgreSQL ${st.server_version}, database ${st.target}`;
  $("status-demo").textContent = st.demo.running
    ? `${st.demo.mode} on ${st.demo.url} (pid ${st.demo.pid}${st.demo.restarts ? `, ${st.demo.restarts} restart(s)` : ""})`
    : "not running";
  $("status-traffic").textContent = st.traffic.running
    ? `${st.traffic.rate_per_s}/s, ${st.traffic.in_flight} waiting, ${st.traffic.sent} sent`
    : "off";
  $("status-psql").textContent = `psql '${st.psql}'`;
  if (state.mode === null) setMode(st.demo.mode);
}

// ------------------------------------------------------------------ faults
const ACTIVE_STATES = new Set(["pending", "active", "reverting"]);

async function refreshFaults() {
  const data = await api("/v1/faults");
  state.faults = data.faults.filter((f) => f.target === TARGET);
  const active = state.faults.filter((f) => ACTIVE_STATES.has(f.state));
  const finished = state.faults.filter((f) => !ACTIVE_STATES.has(f.state)).slice(0, 25);
  renderActiveFaults(active);
  const key = JSON.stringify(finished.map((f) => [f.id, f.state, f.end_reason]));
  const table = $("finished-faults");
  if (table.dataset.key !== key) {
    table.dataset.key = key;
    table.tBodies[0].replaceChildren(...(finished.length ? finished.map(finishedRow) : [h("tr", {}, h("td", { colspan: 6, text: "none yet" }))]));
  }
}

// Cards are updated in place (a button re-created every second would swallow clicks).
function renderActiveFaults(active) {
  const list = $("active-faults");
  const ids = new Set(active.map((f) => f.id));
  for (const card of [...list.children]) if (!ids.has(card.dataset.faultId)) card.remove();
  if (!active.length) {
    list.append(h("li", { class: "empty", text: "No fault is active: the shop is on its own." }));
    return;
  }
  for (const f of active) {
    let card = list.querySelector(`li[data-fault-id="${f.id}"]`);
    if (!card) {
      card = activeFaultCard(f);
      list.append(card);
    }
    card.dataset.state = f.state;
    const badge = card.querySelector(".badge");
    badge.textContent = f.state;
    badge.className = `badge state-${f.state}`;
    const left = f.deadline ? Math.max(0, (Date.parse(f.deadline) - Date.now()) / 1000) : null;
    const blocked = f.impact ? f.impact.blocked_count : null;
    card.querySelector(".left").textContent =
      `${left !== null ? `${fmtS(left)} left` : "starting"}${blocked !== null ? ` · blocking ${blocked} session(s)` : ""}`;
  }
}

function activeFaultCard(f) {
  const stop = h("button", { type: "button", class: "danger", "data-fault-id": f.id, onclick: async (ev) => {
    ev.target.disabled = true;
    try { await api(`/v1/faults/${f.id}`, { method: "DELETE" }); await refreshFaults(); }
    catch (err) { showError("faults-error", err); ev.target.disabled = false; }
  } }, `Stop ${f.kind}`);
  return h("li", { class: "card fault-card", "data-kind": f.kind, "data-fault-id": f.id },
    h("div", { class: "row" }, h("strong", { text: f.kind }), h("span", { class: "badge" }),
      h("code", { class: "muted", text: shortId(f.id) })),
    h("p", {}, paramsText(f.params)),
    h("p", { class: "left" }),
    stop);
}

function paramsText(params) {
  const parts = Object.entries(params || {}).filter(([k]) => !k.startsWith("version_table"))
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`);
  return parts.join(", ") || "default parameters";
}

function finishedRow(f) {
  const held = f.activated_at && f.ended_at ? (Date.parse(f.ended_at) - Date.parse(f.activated_at)) / 1000 : null;
  return h("tr", { "data-state": f.state, "data-kind": f.kind },
    h("td", {}, h("strong", { text: f.kind }), " ", h("code", { class: "muted", text: shortId(f.id) })),
    h("td", {}, h("span", { class: `badge state-${f.state}`, text: f.state })),
    h("td", { text: f.end_reason || "" }),
    h("td", { text: held !== null ? fmtS(held) : "–" }),
    h("td", { text: f.ended_at ? new Date(f.ended_at).toLocaleTimeString([], { hour12: false }) : "" }),
    h("td", { text: f.error || (f.state === "superseded" ? "your repair was kept" : "") }));
}

// ------------------------------------------------------------------ locks
async function refreshLocks() {
  const data = await api("/lab/api/locks");
  const section = $("locks");
  section.dataset.roots = data.roots.length;
  section.dataset.blocked = data.blocked.length;
  // Re-built only when who blocks whom changes (buttons stay clickable); ages are updated in place.
  const shape = (n) => [n.pid, n.application_name, n.state, n.query, (n.locks || []).length, (n.waits || []).map(shape)];
  const key = JSON.stringify([data.roots.map(shape), data.blocked.map((b) => [b.pid, b.blocked_by]), data.idle_in_transaction.map((i) => i.pid)]);
  if (section.dataset.key !== key) {
    section.dataset.key = key;
    renderLocks(data);
  }
  const ages = {};
  const collect = (n) => { if (n.xact_age_s !== undefined && n.xact_age_s !== null) ages[`x${n.pid}`] = n.xact_age_s; (n.waits || []).forEach(collect); };
  data.roots.forEach(collect);
  for (const b of data.blocked) ages[`w${b.pid}`] = b.wait_s;
  for (const i of data.idle_in_transaction) ages[`i${i.pid}`] = i.xact_age_s;
  for (const el of section.querySelectorAll("[data-age]")) {
    if (ages[el.dataset.age] !== undefined) el.textContent = fmtS(ages[el.dataset.age]);
  }
}

function renderLocks(data) {
  const tree = $("lock-tree");
  if (!data.roots.length) {
    tree.replaceChildren(h("p", { class: "empty", text: "Nobody waits on a lock in the shop database." }));
  } else {
    tree.replaceChildren(h("ul", { class: "tree" }, data.roots.map((r) => lockNode(r, 0))),
      data.omitted ? h("p", { class: "muted", text: `… and ${data.omitted} more waiting session(s) not drawn` }) : "");
  }
  const rows = data.blocked.slice(0, 40).map((b) => h("tr", {},
    h("td", { text: b.pid }), h("td", { text: b.application_name || "" }), h("td", { "data-age": `w${b.pid}`, text: fmtS(b.wait_s) }),
    h("td", { text: b.blocked_by.join(", ") }), h("td", {}, h("code", { class: "query", text: b.query || "" }))));
  if (data.blocked.length > 40) rows.push(h("tr", {}, h("td", { colspan: 5, text: `… and ${data.blocked.length - 40} more` })));
  $("blocked").tBodies[0].replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 5, text: "none" }))]));
  const idle = data.idle_in_transaction.map((s) => h("li", { "data-pid": s.pid },
    h("strong", { text: `pid ${s.pid}` }), ` ${s.application_name || "(no name)"}, in transaction for `,
    h("span", { "data-age": `i${s.pid}`, text: fmtS(s.xact_age_s) }),
    s.fault_id ? ` (dbchaos fault ${shortId(s.fault_id)})` : "", " ", terminateButton(s.pid)));
  $("idle").replaceChildren(...(idle.length ? idle : [h("li", { class: "empty", text: "none" })]));
}

function lockNode(node, depth) {
  const locks = (node.locks || []).filter((l) => l.relation || l.locktype === "advisory")
    .map((l) => `${l.mode}${l.granted ? "" : " (waiting)"} on ${l.relation || `advisory ${l.key}`}`);
  const label = h("div", { class: "node" },
    h("strong", { text: `pid ${node.pid}` }), " ", h("span", { text: node.application_name || "(no name)" }),
    node.fault_id ? h("span", { class: "badge", text: `dbchaos fault ${shortId(node.fault_id)}` }) : null,
    " ", h("span", { class: "muted", text: node.state || "" }),
    node.xact_age_s !== undefined && node.xact_age_s !== null
      ? h("span", { class: "muted" }, " · transaction ", h("span", { "data-age": `x${node.pid}`, text: fmtS(node.xact_age_s) })) : null,
    depth === 0 ? terminateButton(node.pid) : null,
    locks.length ? h("div", { class: "muted", text: `holds ${locks.slice(0, 4).join("; ")}` }) : null,
    node.query ? h("code", { class: "query", title: node.query, text: node.query }) : null);
  const waits = node.waits || [];
  const shown = waits.slice(0, 25).map((w) => lockNode(w, depth + 1));
  if (waits.length > 25) shown.push(h("li", { class: "muted", text: `… and ${waits.length - 25} more waiting` }));
  return h("li", { "data-pid": node.pid, "data-depth": depth }, label,
    shown.length ? h("ul", { "aria-label": `waiting on pid ${node.pid}` }, shown) : null);
}

function terminateButton(pid) {
  return h("button", { type: "button", class: "danger small", "data-terminate": pid, onclick: async (ev) => {
    ev.target.disabled = true;
    try {
      await api(`/lab/api/sessions/${pid}/terminate`, { method: "POST" });
      await refreshLocks();
    } catch (err) { showError("locks-error", err); ev.target.disabled = false; }
  } }, `End session ${pid}`);
}

// ------------------------------------------------------------------ migrations
async function refreshMigrations() {
  const d = await api(`/v1/targets/${TARGET}/migrations`);
  $("mig-stored").textContent = d.table_exists ? (d.stored.length ? d.stored.join(", ") : "(no rows)") : "(no version table)";
  $("mig-heads").textContent = (d.heads || []).join(", ") || "unknown";
  const badge = $("mig-state");
  badge.textContent = d.state;
  badge.className = `badge ${d.state === "at head" ? "good" : "bad"}`;
  $("migrations").dataset.state = d.state;
  $("mig-summary").textContent = d.summary;
  const repair = d.repair || [];
  $("mig-repair").replaceChildren(...(repair.length ? [h("h3", { text: "Repair" }), h("ul", {}, repair.map((r) => h("li", { text: r })))] : []));
}

function showRun(result, label) {
  const out = $("deploy-output");
  out.hidden = false;
  out.textContent = `$ ${result.command}\n${result.output || "(no output)"}\n[exit ${result.returncode}${result.timed_out ? ", killed after the timeout" : ""}, ${fmtS(result.duration_s)}]`;
  $("deploy-status").textContent = label;
}

function initMigrationButtons() {
  const buttons = [$("deploy-button"), $("alembic-current"), $("alembic-stamp")];
  const run = async (fn) => {
    buttons.forEach((b) => (b.disabled = true));
    try { await fn(); showError("migrations-error", null); }
    catch (err) { showError("migrations-error", err); $("deploy-status").textContent = ""; }
    finally { buttons.forEach((b) => (b.disabled = false)); refreshMigrations().catch(() => {}); }
  };
  $("deploy-button").addEventListener("click", () => run(async () => {
    $("deploy-status").textContent = "Deploying: alembic upgrade head is running …";
    const r = await api("/lab/api/deploy", { method: "POST" });
    $("migrations").dataset.lastDeploy = r.ok && r.restarted ? "ok" : "failed";
    showRun(r, r.ok ? (r.restarted ? "Deploy finished: migrated and the shop restarted." : `Migrated, but the restart failed: ${r.restart_error}`)
      : r.timed_out ? "Deploy killed: alembic did not finish in time. The shop was not restarted."
        : `Deploy failed: alembic exited with ${r.returncode}. The pipeline stops here; the shop was not restarted.`);
  }));
  $("alembic-current").addEventListener("click", () => run(async () => {
    $("deploy-status").textContent = "Running alembic current …";
    showRun(await api("/lab/api/alembic", { method: "POST", body: { command: "current" } }), "alembic current finished.");
  }));
  $("alembic-stamp").addEventListener("click", () => run(async () => {
    $("deploy-status").textContent = "Running alembic stamp --purge head …";
    const r = await api("/lab/api/alembic", { method: "POST", body: { command: "stamp" } });
    showRun(r, r.ok ? "Stamped: alembic_version now holds the head. dbchaos keeps your repair when the fault ends." : "The stamp failed.");
  }));
}

// ------------------------------------------------------------------ scenario catalogue and forms
const TEXT_LABELS = [
  ["what", "What it is"], ["real_world", "How it happens in real systems"], ["impact", "What it does to a service"],
  ["detect", "How to detect it"], ["repair", "How to repair it"], ["prevent", "How to prevent it"], ["in_the_lab", "In the lab"],
];

function typesOf(schema) {
  const types = new Set();
  const add = (sch) => {
    if (!sch) return;
    if (sch.anyOf) sch.anyOf.forEach(add);
    else if (Array.isArray(sch.type)) sch.type.forEach((t) => types.add(t));
    else if (sch.type) types.add(sch.type);
  };
  add(schema);
  types.delete("null");
  return types;
}

// How a parameter is edited: select, checkbox, number, text, list (comma-separated) or json.
function widgetFor(schema) {
  if (schema.enum) return "select";
  const types = typesOf(schema);
  const only = (...allowed) => types.size > 0 && [...types].every((t) => allowed.includes(t));
  if (only("boolean")) return "checkbox";
  if (only("integer", "number")) return "number";
  if (only("string", "object") && types.has("string")) return "text"; // "schema.table" (or an object, via the API)
  if (only("array")) {
    const items = schema.items || (schema.anyOf || []).find((a) => a.type === "array")?.items;
    if (items && [...typesOf(items)].every((t) => t === "string" || t === "object")) return "list";
  }
  return "json";
}

function fieldFor(kind, name, schema, value, required) {
  const id = `f-${kind}-${name}`;
  const widget = widgetFor(schema);
  const help = schema.description || "";
  let input;
  if (widget === "select") {
    input = h("select", { id, name }, schema.enum.map((v) => h("option", { value: v, selected: v === value, text: v })));
  } else if (widget === "checkbox") {
    input = h("input", { id, name, type: "checkbox", checked: !!value });
  } else if (widget === "number") {
    const num = (schema.anyOf || []).find((a) => a.type === "integer" || a.type === "number") || schema;
    input = h("input", { id, name, type: "number", step: typesOf(schema).has("number") ? "any" : "1",
      min: num.minimum, max: num.maximum, value: value ?? "" });
  } else if (widget === "list") {
    input = h("input", { id, name, type: "text", value: Array.isArray(value) ? value.map((v) => (typeof v === "object" ? JSON.stringify(v) : v)).join(", ") : value ?? "" });
  } else if (widget === "text") {
    input = h("input", { id, name, type: "text", value: value ?? "" });
  } else {
    input = h("textarea", { id, name, rows: 2, spellcheck: "false" }, value === undefined || value === null ? "" : JSON.stringify(value));
  }
  input.dataset.widget = widget;
  if (required) input.setAttribute("aria-required", "true");
  if (help) input.setAttribute("aria-describedby", `${id}-help`);
  return h("div", { class: `field ${widget === "checkbox" ? "check" : ""}` },
    h("label", { for: id }, schema.title || name, required ? " *" : ""),
    input,
    help ? h("small", { id: `${id}-help`, class: "hint", text: widget === "list" ? `${help} (comma-separated)` : help }) : null);
}

function readField(el, schema, required) {
  const widget = el.dataset.widget;
  const name = el.name;
  if (widget === "checkbox") return el.checked;
  const raw = el.value.trim();
  if (raw === "") {
    if (required) throw new Error(`${name} is required`);
    return undefined;
  }
  if (widget === "number") {
    const n = Number(raw);
    if (!Number.isFinite(n)) throw new Error(`${name} must be a number`);
    return n;
  }
  if (widget === "list") {
    return raw.split(",").map((p) => p.trim()).filter((p) => p !== "").map((p) => (p.startsWith("{") ? JSON.parse(p) : p));
  }
  if (widget === "json") {
    try { return JSON.parse(raw); } catch (_) { throw new Error(`${name} must be JSON, e.g. ${JSON.stringify(schema.examples ? schema.examples[0] : [1])}`); }
  }
  return raw;
}

function scenarioCard(sc) {
  const kind = state.kinds[sc.kind];
  const schema = kind ? kind.params_schema : { properties: {} };
  const props = schema.properties || {};
  const required = new Set(schema.required || []);
  const names = Object.keys(props).sort((a, b) => (a.startsWith("version_table") ? 1 : 0) - (b.startsWith("version_table") ? 1 : 0));
  const fields = names.map((n) => fieldFor(sc.kind, n, props[n], sc.params[n] !== undefined ? sc.params[n] : props[n].default, required.has(n)));
  const durationId = `f-${sc.kind}-duration`;
  const result = h("p", { class: "result", role: "status", id: `result-${sc.kind}` });
  const form = h("form", { class: "fault-form", id: `form-${sc.kind}`, "data-kind": sc.kind, novalidate: true },
    h("fieldset", {}, h("legend", { text: `Parameters of ${sc.kind}` }), fields.length ? fields : h("p", { class: "hint", text: "This kind has no parameters to set." }),
      h("div", { class: "field" }, h("label", { for: durationId, text: "Duration (seconds)" }),
        h("input", { id: durationId, name: "duration_s", type: "number", min: 1, max: 3600, step: "any", value: sc.duration_s }))),
    h("button", { type: "submit", class: "primary", id: `start-${sc.kind}` }, `Start ${sc.kind}`),
    result);
  // The parameters the form would send (also used by the browser test to check every form).
  form.readParams = () => {
    const params = {};
    for (const n of names) {
      const el = form.querySelector(`[name="${n}"]`);
      const v = readField(el, props[n], required.has(n));
      if (v !== undefined) params[n] = v;
    }
    return params;
  };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    let params;
    form.querySelectorAll(".field.invalid").forEach((f) => f.classList.remove("invalid"));
    try {
      params = form.readParams();
    } catch (err) {
      result.className = "result error";
      result.textContent = err.message;
      return;
    }
    const duration = Number(form.querySelector("[name=duration_s]").value);
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    result.className = "result";
    result.textContent = `Starting ${sc.kind} …`;
    try {
      const f = await api("/v1/faults", { method: "POST", body: { kind: sc.kind, params, duration_s: duration, target: TARGET } });
      result.textContent = `${sc.kind} is ${f.state} for ${fmtS(f.duration_s)} (fault ${shortId(f.id)}).`;
      refreshFaults().catch(() => {});
    } catch (err) {
      result.className = "result error";
      const field = err.body && err.body.field ? err.body.field.replace(/^params\./, "").split(".")[0] : null;
      const el = field ? form.querySelector(`[name="${field}"]`) : null;
      if (el) el.closest(".field").classList.add("invalid");
      result.textContent = `Could not start ${sc.kind}: ${err.message}`;
    } finally {
      submit.disabled = false;
    }
  });
  const texts = h("dl", { class: "texts" }, TEXT_LABELS.map(([key, label]) => [h("dt", { text: label }), h("dd", { text: sc.text[key] })]));
  return h("article", { class: "scenario card", id: `scenario-${sc.kind}`, "data-kind": sc.kind },
    h("h4", {}, sc.title, " ", h("code", { class: "kind", text: sc.kind })),
    h("p", { text: sc.text.what }),
    h("details", {}, h("summary", { text: "Read more: real systems, impact, detection, repair, prevention" }), texts,
      h("p", { class: "hint", text: `More: ${sc.docs}` })),
    h("details", { class: "start", open: sc.kind === "table-lock" }, h("summary", { text: "Start it" }), form));
}

async function loadCatalogue() {
  const [kinds, cat] = await Promise.all([api("/v1/kinds"), api("/lab/api/scenarios")]);
  for (const k of kinds.kinds) state.kinds[k.kind] = k;
  const groups = cat.groups.map((g) => h("section", { class: "group", id: `group-${g.id}`, "aria-labelledby": `group-${g.id}-h` },
    h("h3", { id: `group-${g.id}-h`, text: g.title }), h("p", { class: "hint", text: g.intro }),
    h("div", { class: "scenarios" }, g.scenarios.map(scenarioCard))));
  $("scenario-groups").replaceChildren(...groups);
}

// ------------------------------------------------------------------ game days
// The server runs the steps and checks them; this only shows them and sends the user's moves.
async function refreshGamedays() {
  const data = await api("/lab/api/gamedays");
  const section = $("gamedays");
  const run = data.current;
  const busy = !!(run && !run.finished);
  const listKey = JSON.stringify([data.gamedays.map((g) => g.id), busy]);
  if (section.dataset.listKey !== listKey) {
    section.dataset.listKey = listKey;
    $("gameday-list").replaceChildren(h("ul", { class: "cards" }, data.gamedays.map((g) => h("li", { class: "card gameday", "data-gameday": g.id },
      h("strong", { text: g.title }), h("p", { text: g.summary }),
      h("p", { class: "muted", text: `${g.steps.length} steps: ${g.steps.filter((st) => st.kind === "act").length} for you to do` }),
      h("button", { type: "button", class: "primary", id: `gameday-start-${g.id}`, disabled: busy, onclick: (ev) => gamedayAction(ev, `/lab/api/gamedays/${g.id}/start`) }, `Start “${g.title}”`)))));
  }
  Object.assign(section.dataset, {
    current: run ? run.id : "",
    step: run ? run.step : "",
    stepKind: run ? run.current.kind : "",
    finished: run ? String(run.finished) : "",
  });
  const box = $("gameday-current");
  if (!run) {
    if (box.dataset.key !== "none") {
      box.dataset.key = "none";
      box.replaceChildren(h("p", { class: "hint", text: "Pick a game day: it injects a fault, tells you what to watch, asks you to act, and checks what you did against the live lab." }));
    }
    return;
  }
  const key = JSON.stringify([run.id, run.started_at, run.step, run.finished, (run.log || []).length]);
  if (box.dataset.key !== key) {
    box.dataset.key = key;
    const cur = run.current;
    const buttons = [];
    if (!run.finished && cur.kind === "observe") {
      buttons.push(h("button", { type: "button", class: "primary", id: "gameday-continue", onclick: (ev) => gamedayAction(ev, "/lab/api/gamedays/current/continue") }, "I have seen it: continue"));
    }
    buttons.push(h("button", { type: "button", class: run.finished ? "" : "danger", id: "gameday-abort", onclick: (ev) => gamedayAction(ev, "/lab/api/gamedays/current/abort") },
      run.finished ? "Close" : "Abort (reverts its fault)"));
    box.replaceChildren(h("article", { class: "card gameday", "aria-labelledby": "gameday-title" },
      h("h3", { id: "gameday-title", text: run.finished ? `${run.title}: done` : run.title }),
      h("ol", { class: "steps" }, run.steps.map((st) => h("li", { class: st.state },
        st.title, st.state === "done" ? " ✓" : "", st.kind === "act" ? h("span", { class: "muted", text: " (your move)" }) : null))),
      run.log && run.log.length ? h("ul", { class: "plain log" }, run.log.map((line) => h("li", { class: "ok-text", text: `✓ ${line}` }))) : null,
      h("h4", { text: cur.title }),
      h("p", { text: cur.text }),
      cur.hint && !run.finished ? h("p", { class: "hint" }, "Where: ", h("strong", { text: cur.hint })) : null,
      h("p", { class: "status", id: "gameday-status", role: "status" }),
      h("div", { class: "buttons" }, buttons)));
  }
  $("gameday-status").textContent = run.status || "";
}

async function gamedayAction(ev, path) {
  ev.target.disabled = true;
  try {
    await api(path, { method: "POST" });
    showError("gamedays-error", null);
  } catch (err) {
    showError("gamedays-error", err);
  } finally {
    ev.target.disabled = false;
    refreshGamedays().catch((err) => showError("gamedays-error", err));
  }
}

// ------------------------------------------------------------------ runs and reports (issue 7's experiments)
// An experiment run by the server against the shop: a probe plays a user of GET /items/1, the
// method locks items for 10 s, and the hypothesis is what a hardened service should meet.
function labExperiment(demoUrl, mode) {
  return {
    version: 1,
    name: `lab: items locked for 10 s (${mode} shop)`,
    description: "ACCESS EXCLUSIVE on items for 10 s while a probe reads GET /items/1 of the demo shop.",
    target: TARGET,
    probes: [{ name: "get-item", type: "http", url: `${demoUrl}/items/1`, timeout: "5s", rate: 10, concurrency: 30 }],
    hypothesis: [
      { tolerance: "p95 < 2s", probe: "get-item", phase: "during" },
      { tolerance: "recovers within 2s", probe: "get-item" },
    ],
    method: [{ name: "lock-items", kind: "table-lock", params: { tables: ["items"], mode: "ACCESS EXCLUSIVE" }, at: "0s", duration: "10s" }],
    baseline: "5s",
    recovery: "10s",
  };
}

async function refreshRuns() {
  const box = $("runs-list");
  const where = await api("/lab/api/runs");
  box.className = where.available ? "" : "placeholder";
  if (!where.available) {
    box.replaceChildren(h("p", { text: "Experiment runs and their reports will be listed here once this server runs experiments (dbchaos run, POST /v1/experiments). Until then, the finished faults above are the record." }));
    return;
  }
  const data = await api(where.path);
  const runs = (data.experiments || []).filter((r) => r.target === TARGET);
  $("runs").dataset.runs = runs.length;
  $("runs").dataset.lastState = runs.length ? runs[0].state : "";
  let button = $("run-experiment");
  if (!button) {
    button = h("button", { type: "button", class: "primary", id: "run-experiment", onclick: startExperiment },
      "Run an experiment: items locked for 10 s");
    box.replaceChildren(
      h("p", { class: "hint", text: "The server runs a whole experiment (docs/experiments.md): 5 s of baseline, a 10 s table lock on items, 10 s of recovery, while a probe reads GET /items/1; the verdict says whether p95 stayed under 2 s during the lock and the shop recovered within 2 s. Try it on the naive shop, then on the hardened one." }),
      h("div", { class: "buttons" }, button), h("p", { id: "run-status", role: "status" }),
      h("table", { class: "grid", id: "runs-table" },
        h("thead", {}, h("tr", {}, ["Experiment", "State", "Started", "Findings", "Report"].map((t) => h("th", { scope: "col", text: t })))),
        h("tbody")));
  }
  button.disabled = runs.some((r) => r.state === "running");
  const key = JSON.stringify(runs.map((r) => [r.id, r.state, r.progress && r.progress.phase]));
  const table = $("runs-table");
  if (table.dataset.key === key) return;
  table.dataset.key = key;
  const rows = runs.map((r) => h("tr", { "data-state": r.state },
    h("td", { text: r.name }),
    h("td", {}, h("span", { class: `badge ${r.state === "held" ? "good" : r.state === "running" ? "" : "bad"}`, text: r.state }),
      r.progress && r.state === "running" ? h("span", { class: "muted", text: ` ${r.progress.phase}` }) : null),
    h("td", { text: r.created_at ? clock(typeof r.created_at === "number" ? r.created_at : Date.parse(r.created_at) / 1000) : "" }),
    h("td", {}, (r.findings || []).length ? h("ul", {}, r.findings.slice(0, 4).map((f) => h("li", { text: f }))) : (r.error || "")),
    h("td", {}, r.state !== "running" && !r.error ? h("a", { href: `${where.path}/${r.id}/report`, target: "_blank", rel: "noopener", text: "HTML report" }) : "")));
  table.tBodies[0].replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 5, text: "No experiment has run on the shop yet." }))]));
}

async function startExperiment(ev) {
  ev.target.disabled = true;
  const status = $("run-status");
  try {
    const st = await api("/lab/api/status");
    const run = await api("/v1/experiments", { method: "POST", body: { experiment: labExperiment(st.demo.url, st.demo.mode), labels: { source: "lab" } } });
    status.textContent = `Experiment ${shortId(run.id)} started: about 25 s.`;
    await refreshRuns();
  } catch (err) {
    status.textContent = "";
    showError("runs-error", err);
    ev.target.disabled = false;
  }
}

// ------------------------------------------------------------------ start
window.lab = { api, h, $, poll, showError, fmtS, state, refreshFaults, refreshLocks, refreshMigrations, refreshGamedays };

document.addEventListener("DOMContentLoaded", () => {
  initMode();
  initMigrationButtons();
  loadCatalogue().catch((err) => showError("catalogue-error", err));
  poll(refreshStatus, 3000, "live-error");
  poll(refreshTraffic, 1000, "live-error");
  poll(refreshFaults, 1000, "faults-error");
  poll(refreshLocks, 1000, "locks-error");
  poll(refreshMigrations, 2000, "migrations-error");
  poll(refreshRuns, 2000, "runs-error");
  api("/lab/api/deploy").then((d) => { if (d.last) showRun(d.last, "Last deploy:"); }).catch((err) => showError("migrations-error", err));
  poll(refreshGamedays, 1000, "gamedays-error");
});
