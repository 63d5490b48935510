// The Agora dashboard: polls the console's JSON API and draws the node
// table, the charts, the events and the ledger audit. Plain DOM, no
// framework, no build step. Server text is only ever set as textContent.
"use strict";

const POLL_OVERVIEW_MS = 1000;
const POLL_HISTORY_MS = 2000;
const POLL_AUDIT_MS = 15000;
const CHART_WINDOW_MS = 10 * 60 * 1000;
const CHART_MIN_SPAN_MS = 60 * 1000;
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
let signedIn = false;
let timers = [];

class SignedOut extends Error {}

// One API call. POSTs carry JSON and the header the console requires of
// every POST (a cross-site page cannot set it).
async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.headers["X-Agora-Console"] = "1";
    init.body = JSON.stringify(body || {});
  }
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (response.status === 401 && path !== "/api/login") {
    showLogin(data && data.error);
    throw new SignedOut(data && data.error);
  }
  if (!response.ok) {
    const err = new Error((data && data.error) || ("HTTP " + response.status));
    err.status = response.status;
    throw err;
  }
  return data;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(kind, text) { return el("span", { class: "badge " + kind }, text); }

function showLogin(message) {
  signedIn = false;
  timers.forEach(clearTimeout);
  timers = [];
  $("dashboard").hidden = true;
  $("who").hidden = true;
  $("login-panel").hidden = false;
  $("summary").replaceChildren();
  $("login-error").textContent = message && message.startsWith("sign in first") ? "" : (message || "");
}

function showDashboard(username) {
  signedIn = true;
  $("login-panel").hidden = true;
  $("dashboard").hidden = false;
  $("who").hidden = false;
  $("who-name").textContent = "signed in as " + username;
  loop(refreshOverview, POLL_OVERVIEW_MS);
  loop(refreshHistory, POLL_HISTORY_MS);
  loop(refreshAudit, POLL_AUDIT_MS);
  refreshSettings().catch(() => {});
}

// Runs `task` now and again `every` ms after it finishes (never two at once).
function loop(task, every) {
  const run = async () => {
    if (!signedIn) return;
    try { await task(); } catch (err) { if (err instanceof SignedOut) return; console.warn(err); }
    if (signedIn) timers.push(setTimeout(run, every));
  };
  run();
}

async function refreshOverview() {
  let overview;
  try {
    overview = await api("GET", "/api/overview");
    $("nodes-error").textContent = "";
  } catch (err) {
    if (!(err instanceof SignedOut)) $("nodes-error").textContent = err.message;
    throw err;
  }
  const body = $("nodes-body");
  const rows = overview.nodes.map((node) => {
    let state;
    if (!node.reachable) state = "unreachable";
    else if (node.leader) state = "leader";
    else if (node.lagging) state = "lagging";
    else state = "ok";
    const stateBadge = {
      unreachable: badge("bad", "unreachable"),
      leader: badge("leader", "leader"),
      lagging: badge("warn", "lagging"),
      ok: badge("ok", "ok"),
    }[state];
    const cells = node.reachable
      ? [node.addr, node.role + (node.voter === false ? " (learner)" : ""), node.term, node.last_log_index,
         node.committed_index, node.applied_index, node.lag == null ? "–" : node.lag,
         node.requests_per_sec.toFixed(1), bytes(node.db_bytes), node.uptime, node.version]
      : [node.addr, "unreachable", "–", "–", "–", "–", node.lag == null ? "–" : node.lag, "–", "–", "–", "–"];
    const tr = el("tr", { "data-node-id": node.id, "data-state": state, class: state === "ok" ? "" : state },
      el("td", {}, node.leader ? "★ " : "", "node " + node.id),
      ...cells.map((c) => el("td", {}, c)),
      el("td", {}, stateBadge));
    if (node.error) tr.title = node.error;
    return tr;
  });
  body.replaceChildren(...rows);
  const up = overview.nodes.filter((n) => n.reachable).length;
  const summary = [
    el("span", { class: "pill", id: "summary-leader" }, overview.leader_id ? "leader: node " + overview.leader_id : "no leader"),
    el("span", { class: "pill" }, "term " + overview.term),
    el("span", { class: "pill" + (up < overview.nodes.length ? " bad" : ""), id: "summary-up" }, up + "/" + overview.nodes.length + " nodes answer"),
  ];
  $("summary").replaceChildren(...summary);
  $("nodes-updated").textContent = "updated " + new Date().toLocaleTimeString();
}

async function refreshHistory() {
  const [history, events] = await Promise.all([api("GET", "/api/history"), api("GET", "/api/events")]);
  const points = history.points;
  drawChart("chart-requests", points, (p) => p.requests_per_sec, (v) => v.toFixed(1) + " req/s");
  drawChart("chart-commits", points, (p) => p.commits_per_sec, (v) => v.toFixed(1) + " commits/s");
  drawChart("chart-lag", points, (p) => p.max_lag, (v) => Math.round(v) + " entries");
  const cluster = events.cluster.map((event) =>
    el("li", { "data-kind": event.kind },
      el("time", {}, new Date(event.time_ms).toLocaleString()),
      el("span", { class: "kind" }, event.kind), "node " + event.node_id + ": " + event.message));
  $("events").replaceChildren(...(cluster.length ? cluster : [el("li", { class: "muted" }, "nothing recorded yet")]));
  $("events-error").textContent = events.cluster_error || "";
  const observed = events.observed.slice(0, 50).map((event) =>
    el("li", { "data-node-id": event.node_id == null ? "" : event.node_id },
      el("time", {}, new Date(event.at_ms).toLocaleTimeString()), event.text));
  $("observed").replaceChildren(...(observed.length ? observed : [el("li", { class: "muted" }, "nothing yet")]));
}

// A line chart of the last CHART_WINDOW_MS; gaps where `value` is null.
function drawChart(id, points, value, format) {
  const svg = $(id);
  const W = 400, H = 150, PAD = 14;
  // The last CHART_WINDOW_MS, or less while the console has less history
  // (a chart that fills the width reads better than a sliver at its edge).
  const now = points.length ? points[points.length - 1].at_ms : Date.now();
  const first = points.length ? points[0].at_ms : now;
  const span = Math.min(CHART_WINDOW_MS, Math.max(CHART_MIN_SPAN_MS, now - first));
  const start = now - span;
  const shown = points.filter((p) => p.at_ms >= start);
  const values = shown.map(value).filter((v) => v != null);
  const top = niceMax(Math.max(1, ...values));
  const x = (t) => ((t - start) / span) * W;
  const y = (v) => H - PAD - (v / top) * (H - 2 * PAD);
  const parts = [];
  for (const frac of [0, 0.5, 1]) {
    const gy = y(top * frac);
    parts.push(svgEl("line", { class: "grid", x1: 0, x2: W, y1: gy, y2: gy }));
    parts.push(svgEl("text", { class: "axis", x: 2, y: gy - 2 }, String(round(top * frac))));
  }
  let segment = [];
  const segments = [];
  for (const p of shown) {
    const v = value(p);
    if (v == null) { if (segment.length) segments.push(segment); segment = []; continue; }
    segment.push([x(p.at_ms), y(v)]);
  }
  if (segment.length) segments.push(segment);
  for (const seg of segments) {
    const line = seg.map(([a, b]) => a.toFixed(1) + "," + b.toFixed(1)).join(" ");
    const base = (H - PAD).toFixed(1);
    parts.push(svgEl("polygon", { class: "area", points: seg[0][0].toFixed(1) + "," + base + " " + line + " " + seg[seg.length - 1][0].toFixed(1) + "," + base }));
    parts.push(svgEl("polyline", { class: "line", points: line }));
  }
  svg.replaceChildren(...parts);
  const last = values.length ? values[values.length - 1] : null;
  $(id + "-now").textContent = (last == null ? "no data" : "now " + format(last)) + " · last " + describeSpan(span);
}

function describeSpan(ms) {
  const s = Math.round(ms / 1000);
  return s < 120 ? s + " s" : Math.round(s / 60) + " min";
}

function bytes(n) {
  if (n < 1024) return n + " B";
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n, i = -1;
  do { v /= 1024; i++; } while (v >= 1024 && i < units.length - 1);
  return v.toFixed(v >= 10 ? 0 : 1) + " " + units[i];
}

function niceMax(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}
function round(v) { return v >= 10 ? Math.round(v) : Math.round(v * 10) / 10; }

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text != null) node.textContent = text;
  return node;
}

async function refreshAudit() {
  const box = $("audit");
  let audit;
  try {
    audit = await api("GET", "/api/audit");
  } catch (err) {
    if (!(err instanceof SignedOut)) box.replaceChildren(el("div", { class: "verdict bad" }, "audit failed: " + err.message));
    throw err;
  }
  const verdict = audit.clean
    ? el("div", { class: "verdict clean", id: "audit-verdict" }, "✔ clean on every node" + (audit.applied_index != null ? " at index " + audit.applied_index : ""))
    : el("div", { class: "verdict bad", id: "audit-verdict" }, "✘ NOT clean");
  const parts = [verdict];
  if (audit.totals) {
    const t = audit.totals;
    const rows = [["accounts", t.accounts], ["journal entries", t.journal_entries], ["open holds", t.open_holds],
      ["users hold", t.user_money], ["operator revenue", t.operator_balance], ["sum of balances", (t.balance_sum_cents / 100).toFixed(2)],
      ["commission", t.commission_bps + " bps (" + (t.commission_bps / 100).toFixed(2) + "%)"]];
    parts.push(el("dl", {}, ...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
  }
  if (audit.problems.length) parts.push(el("ul", { class: "error" }, ...audit.problems.map((p) => el("li", {}, p))));
  box.className = "audit";
  box.replaceChildren(...parts);
}

function formValues(form) {
  const out = {};
  for (const input of form.querySelectorAll("input, select")) {
    if (input.type === "checkbox") out[input.name] = input.checked;
    else if (input.tagName === "SELECT") out[input.name] = input.value;
    else if (input.type === "number") out[input.name] = Number(input.value);
    else out[input.name] = input.value.trim();
  }
  return out;
}

function report(id, ok, text) {
  const p = $(id);
  p.className = "result " + (ok ? "ok" : "bad");
  p.textContent = text;
}

// Wires a form to a POST; `describe` turns the answer into a sentence.
function action(formId, path, resultId, describe, confirmText) {
  $(formId).addEventListener("submit", async (event) => {
    event.preventDefault();
    const values = formValues(event.target);
    if (confirmText && !window.confirm(confirmText(values))) return;
    report(resultId, true, "working…");
    try {
      const answer = await api("POST", path, values);
      report(resultId, true, describe(answer, values));
      refreshOverview().catch(() => {});
    } catch (err) {
      if (!(err instanceof SignedOut)) report(resultId, false, err.message);
    }
  });
}

const membersText = (verb) => (answer, values) =>
  "node " + values.id + " " + verb + " (entry " + answer.index + "); members: " +
  answer.members.map((m) => m.id + (m.voter ? "" : " (learner)")).join(", ");

let shownUser = null;
function showUser(user) {
  shownUser = user.username;
  $("user-card").hidden = false;
  const facts = [
    "balance " + user.balance + ", held " + user.held + ", pending proceeds " + user.pending_proceeds,
    user.sales + " sale(s), " + user.strikes + " lost dispute(s), " + user.active_listings + " listing(s) on sale, " + user.open_holds + " open hold(s)",
    "registered " + new Date(user.created_at_ms).toLocaleString() + (user.last_login_ms ? ", last login " + new Date(user.last_login_ms).toLocaleString() : ", never logged in"),
  ];
  if (user.delete_blocker) facts.push("cannot be deleted: " + user.delete_blocker);
  $("user-info").replaceChildren(
    el("strong", {}, user.username), " (user " + user.user_id + ", " + user.role + ") ",
    user.suspended ? badge("bad", "suspended") : badge("ok", "in good standing"),
    ...facts.map((f) => el("div", { class: "muted" }, f)));
}

async function openUser(name) {
  try {
    showUser(await api("GET", "/api/users/" + encodeURIComponent(name)));
    report("users-result", true, "");
  } catch (err) {
    $("user-card").hidden = true;
    shownUser = null;
    if (!(err instanceof SignedOut)) report("users-result", false, err.message);
  }
}

async function setSuspended(suspended) {
  if (!shownUser) return;
  try {
    const user = await api("POST", "/api/suspension", { username: shownUser, suspended });
    showUser(user);
    report("users-result", true, user.username + (suspended ? " is suspended" : " is no longer suspended"));
  } catch (err) {
    if (!(err instanceof SignedOut)) report("users-result", false, err.message);
  }
}

function showSettings(s) {
  const rows = [
    ["commission_bps", s.commission_bps + " (" + (s.commission_bps / 100).toFixed(2) + "%)"],
    ["hold_ttl_ms", s.hold_ttl_ms + " (" + Math.round(s.hold_ttl_ms / 1000) + " s)"],
    ["dispute_window_ms", s.dispute_window_ms + " (" + Math.round(s.dispute_window_ms / 1000) + " s)"],
    ["argon2_memory_kib", s.argon2_memory_kib],
    ["argon2_iterations", s.argon2_iterations],
    ["argon2_parallelism", s.argon2_parallelism],
  ];
  $("settings-body").replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("td", { class: "muted" }, k), el("td", {}, v))));
}

async function refreshSettings() { showSettings(await api("GET", "/api/settings")); }

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("login-error").textContent = "";
    $("login-submit").disabled = true;
    try {
      const who = await api("POST", "/api/login", {
        username: $("login-username").value.trim(),
        password: $("login-password").value,
      });
      $("login-password").value = "";
      showDashboard(who.username);
    } catch (err) {
      $("login-error").textContent = err.message;
    } finally {
      $("login-submit").disabled = false;
    }
  });
  $("logout").addEventListener("click", async () => {
    try { await api("POST", "/api/logout", {}); } catch (_) { /* signed out either way */ }
    showLogin("");
  });
  $("audit-run").addEventListener("click", () => refreshAudit().catch(() => {}));
  action("form-learner", "/api/members/learner", "members-result", membersText("added as a learner"));
  action("form-promote", "/api/members/promote", "members-result", membersText("is a voter"));
  action("form-remove", "/api/members/remove", "members-result", membersText("was removed"),
    (v) => "Remove node " + v.id + " from the cluster?");
  action("form-setting", "/api/settings", "settings-result", (a, v) => {
    showSettings(a);
    return v.name + " set to " + v.value + " (entry " + a.index + ")";
  });
  $("form-user").addEventListener("submit", async (event) => {
    event.preventDefault();
    const q = formValues(event.target).q;
    try {
      const found = await api("GET", "/api/users?q=" + encodeURIComponent(q));
      const rows = found.users.map((u) => {
        const tr = el("tr", { class: "pick", "data-user": u.username },
          el("td", {}, u.username), el("td", {}, u.role), el("td", {}, u.balance),
          el("td", {}, u.suspended ? badge("bad", "suspended") : badge("ok", "ok")));
        tr.addEventListener("click", () => openUser(u.username));
        return tr;
      });
      $("users-found-body").replaceChildren(...rows);
      $("users-found").hidden = rows.length === 0;
      report("users-result", rows.length > 0, rows.length ? (found.more ? "first " + rows.length + " shown; click one" : "click one") : "nobody matches");
      if (rows.length === 1) openUser(found.users[0].username);
    } catch (err) {
      if (!(err instanceof SignedOut)) report("users-result", false, err.message);
    }
  });
  $("user-suspend").addEventListener("click", () => setSuspended(true));
  $("user-unsuspend").addEventListener("click", () => setSuspended(false));
  $("user-delete").addEventListener("click", async () => {
    if (!shownUser || !window.confirm("Delete the account " + shownUser + "? Only inactive accounts with a zero balance can be.")) return;
    try {
      const gone = await api("POST", "/api/users/delete", { username: shownUser });
      $("user-card").hidden = true;
      shownUser = null;
      report("users-result", true, gone.username + " was deleted (entry " + gone.index + ")");
    } catch (err) {
      if (!(err instanceof SignedOut)) report("users-result", false, err.message);
    }
  });
  $("form-log").addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = formValues(event.target).id;
    try {
      const tail = await api("GET", "/api/nodes/" + id + "/log");
      $("log").hidden = false;
      $("log").textContent = tail.lines.join("\n");
      $("log").scrollTop = $("log").scrollHeight;
      report("log-result", true, "node " + tail.node_id + ": " + tail.path + " (" + bytes(tail.file_bytes) + "), last " + tail.lines.length + " lines");
    } catch (err) {
      $("log").hidden = true;
      if (!(err instanceof SignedOut)) report("log-result", false, err.message);
    }
  });

  api("GET", "/api/session").then((who) => showDashboard(who.username)).catch(() => {});
});
