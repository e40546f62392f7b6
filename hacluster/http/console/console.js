// The hacluster web console: plain JavaScript on the HTTPS API (/api/...), nothing
// fetched from elsewhere. Everything shown comes from the API; what a role may not do
// is hidden here AND refused by the server. Text from the cluster is always set with
// textContent (never parsed as HTML).
"use strict";

// UTC, ISO 8601, to the second: the one time format of the modules' logs too.
function utcTime(ms) {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
}

const DANGEROUS = {
  stop: "stops the module on the chosen node(s); a primary's in-sync secondary takes over",
  forcestop: "stops the module at once (stop scripts called with force)",
  stopstart: "stops and starts the module again; on a primary the secondary may take over",
  restart: "stops and starts the application scripts (same role): the service pauses",
  errd_off: "turns the process checker (errd) off: a dead process is no longer acted on",
  checker_off: "turns the module's checkers off: a failed check is no longer acted on",
  swap: "hands the primary role to the in-sync secondary (the application stops here and starts there)",
  prim: "names this node's copy the good one and starts it as primary",
  second: "starts as secondary: this node's copy is overwritten from the primary",
  primforce: "makes this node primary EVEN IF ITS COPY IS NOT CURRENT: whatever the current copy holds that this one lacks is overwritten",
  failover_off: "turns automatic failover off for the module",
};
const COMMANDS = ["start", "stop", "restart", "stopstart", "forcestop", "swap", "prim", "second",
  "primforce", "failover_on", "failover_off", "errd_on", "errd_off", "checker_on",
  "checker_off", "resetloop"];
const ROLE_RANK = { monitor: 0, control: 1, admin: 2 };

const S = {
  user: null, role: null, csrf: null, handoff: null, cluster: null, modules: [],
  events: null, tab: "monitor", logStream: null, timeline: [], checking: false,
};

const $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function may(role) { return S.role && ROLE_RANK[S.role] >= ROLE_RANK[role]; }

async function api(method, path, body, raw) {
  const headers = {};
  if (method !== "GET") headers["X-CSRF-Token"] = S.csrf || "";
  let payload;
  if (raw !== undefined) { payload = raw; headers["Content-Type"] = "application/octet-stream"; }
  else if (body !== undefined) { payload = JSON.stringify(body); headers["Content-Type"] = "application/json"; }
  const r = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  let answer = null;
  try { answer = await r.json(); } catch (e) { answer = null; }
  if (r.status === 401 && path !== "/api/login" && path !== "/api/handoff") showLogin("session ended: log in again");
  return { status: r.status, body: answer };
}

function withTimeout(ms) {
  const c = new AbortController();
  setTimeout(() => c.abort(), ms);
  return c.signal;
}

// ---- login, session, handoff ---------------------------------------------------------
function showLogin(message) {
  stopEvents();
  $("app").classList.add("hidden");
  $("status-bar").classList.add("hidden");
  $("login").classList.remove("hidden");
  $("login-error").textContent = message || "";
}

async function loggedIn(session) {
  S.user = session.user; S.role = session.role; S.csrf = session.csrf;
  $("login").classList.add("hidden");
  $("app").classList.remove("hidden");
  $("status-bar").classList.remove("hidden");
  $("whoami").textContent = `${S.user} (${S.role})`;
  document.body.dataset.role = S.role;
  applyRole();
  await refreshSession();
  showTab(S.tab);
  startEvents();
}

async function refreshSession() {
  const r = await api("GET", "/api/session");
  if (r.status === 200) { S.handoff = r.body.handoff; S.csrf = r.body.csrf; }
}

function applyRole() {
  const control = may("control"), admin = may("admin");
  $("control-readonly").classList.toggle("hidden", control);
  $("control-body").classList.toggle("hidden", !control);
  $("config-readonly").classList.toggle("hidden", admin);
  $("config-body").classList.toggle("hidden", !admin);
  for (const b of document.querySelectorAll("button.cmd")) b.disabled = !control;
}

// ---- tabs ----------------------------------------------------------------------------
function showTab(name) {
  S.tab = name;
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === name);
  for (const p of document.querySelectorAll(".panel")) p.classList.toggle("hidden", p.id !== "tab-" + name);
  if (name === "advanced") renderAdvanced();
}

// ---- live events and the failover of the page itself -----------------------------------
function setConnected(up) {
  const c = $("conn-status");
  c.textContent = up ? "live" : "reconnecting";
  c.className = up ? "conn-up" : "conn-down";
  document.body.dataset.connected = up ? "yes" : "no";
}

function stopEvents() {
  if (S.events) { S.events.close(); S.events = null; }
}

function startEvents() {
  stopEvents();
  const es = new EventSource("/api/events");
  S.events = es;
  es.addEventListener("snapshot", (e) => { setConnected(true); applySnapshot(JSON.parse(e.data)); });
  for (const kind of ["module", "member", "raft"]) {
    es.addEventListener(kind, (e) => addTimeline(JSON.parse(e.data)));
  }
  es.addEventListener("error", (e) => {
    if (e.data) return;                 // an "error" event of the stream: a reading failed
    setConnected(false);
    stopEvents();
    checkNode();
  });
}

// Our node stopped answering the event stream: is it still there? If not, go to
// another member (the page knows every member's API from /api/cluster) with a handoff
// token, so that the user need not log in again.
async function checkNode() {
  if (S.checking) return;
  S.checking = true;
  try {
    for (;;) {
      try {
        const r = await fetch("/api/session", { credentials: "same-origin", signal: withTimeout(2500) });
        if (r.status === 401) { showLogin("session ended: log in again"); return; }
        if (r.ok) { startEvents(); return; }
      } catch (e) { /* our node does not answer */ }
      if (await moveToAnotherMember()) return;
      await new Promise((ok) => setTimeout(ok, 1500));
    }
  } finally { S.checking = false; }
}

async function moveToAnotherMember() {
  const members = ((S.cluster && S.cluster.members) || []).filter(
    (m) => m.api && m.api !== location.origin);
  members.sort((a, b) => (b.live === true) - (a.live === true));
  for (const m of members) {
    try {
      await fetch(m.api + "/api/openapi.json", { mode: "no-cors", signal: withTimeout(2500) });
    } catch (e) { continue; }
    const hash = new URLSearchParams({ handoff: S.handoff || "", tab: S.tab });
    location.href = m.api + "/console/#" + hash.toString();
    return true;
  }
  return false;
}

// ---- monitor -------------------------------------------------------------------------
function nodesOf() {
  const names = new Set();
  for (const m of S.modules) for (const row of m.nodes) names.add(row.node);
  return [...names].sort();
}

function applySnapshot(snap) {
  S.cluster = snap.cluster; S.modules = snap.modules || [];
  $("cluster-name").textContent = S.cluster.cluster || "";
  $("node-name").textContent = S.cluster.node || "?";
  $("leader-name").textContent = S.cluster.leader || "none";
  $("term").textContent = S.cluster.term;
  renderStates(); renderMembers(); fillSelects();
  if (S.tab === "advanced") renderAdvanced();
}

function stateClass(state) { return "state-" + String(state || "UNKNOWN").replace(/\s+/g, "-"); }

function cellFor(module, row) {
  const td = el("td", null, "cell");
  td.dataset.module = module.name; td.dataset.node = row.node;
  if (!row.ok) {
    td.classList.add("state-UNKNOWN");
    td.dataset.state = "UNKNOWN";
    td.append(el("div", "no answer", "state"), el("div", row.error || "", "detail"));
    return td;
  }
  const st = row.result || {};
  td.dataset.state = st.state;
  td.classList.add(stateClass(st.state));
  if (st.ready && st.ready !== "Ready") td.classList.add("transient");
  td.append(el("div", st.state + (st.ready && st.ready !== "Ready" ? " (" + st.ready + ")" : ""), "state"));
  if (module.mode === "mirror") {
    if (st.primary !== undefined) td.append(el("div", `primary ${st.primary || "none"} · epoch ${st.epoch ?? "-"}`, "detail"));
    if (st.in_sync) td.append(el("div", `in sync: ${st.in_sync.join(", ") || "none"}`, "detail"));
    if (st.reintegration) {
      const r = st.reintegration, total = r.bytes_total || 0, done = r.bytes_done || 0;
      const pct = total ? Math.min(100, Math.round(100 * done / total)) : 0;
      td.append(el("div", `reintegration ${r.phase || ""} ${pct}%` + (r.eta_s ? ` eta ${Math.round(r.eta_s)}s` : ""), "detail"));
      const bar = el("span", null, "progress"), fill = el("span");
      fill.style.width = pct + "%";
      bar.append(fill); td.append(bar);
    }
  } else {
    // a farm node's share of the traffic: the buckets (of 256) the committed table gives it
    const members = st.members || {};
    const pct = st.buckets !== undefined ? Math.round(100 * st.buckets / 256) : null;
    td.append(el("div", `share ${st.buckets ?? "-"}/256 buckets` + (pct !== null ? ` (${pct}%)` : "")
      + ` · power ${st.power ?? "-"}`, "detail"));
    if (Object.keys(members).length) {
      td.append(el("div", "farm: " + Object.keys(members).sort().map((n) => `${n} ×${members[n]}`).join(", "), "detail"));
    }
  }
  if (st.transition) td.append(el("div", "→ " + st.transition, "detail"));
  if (st.vip && st.vip.length) td.append(el("div", "vip " + st.vip.join(", "), "detail"));
  return td;
}

function renderStates() {
  const nodes = nodesOf();
  const head = $("states").tHead, body = $("states").tBodies[0];
  head.replaceChildren(); body.replaceChildren();
  const hr = el("tr"); hr.append(el("th", "Module"), el("th", "Mode"));
  for (const n of nodes) hr.append(el("th", n));
  head.append(hr);
  for (const m of S.modules) {
    const tr = el("tr");
    tr.append(el("td", m.name), el("td", m.mode + (m.failover === false ? " (failover off)" : "")));
    for (const n of nodes) {
      const row = m.nodes.find((r) => r.node === n);
      tr.append(row ? cellFor(m, row) : el("td", "-"));
    }
    body.append(tr);
  }
  if (!S.modules.length) { const tr = el("tr"); tr.append(el("td", "no module installed")); body.append(tr); }
}

function renderMembers() {
  const members = (S.cluster && S.cluster.members) || [];
  const mon = $("members-monitor").tBodies[0], conf = $("members").tBodies[0];
  mon.replaceChildren(); conf.replaceChildren();
  for (const m of members) {
    const a = el("tr");
    a.append(el("td", m.name), el("td", m.role), el("td", m.live ? "yes" : "no"),
      el("td", m.connected ? "yes" : "no"), el("td", m.leader ? "leader" : ""));
    a.className = m.live ? "" : "state-UNKNOWN";
    mon.append(a);
    const b = el("tr");
    b.append(el("td", m.name), el("td", m.role), el("td", m.address), el("td", m.api || "-"),
      el("td", m.live ? "yes" : "no"));
    conf.append(b);
  }
}

function addTimeline(ev) {
  // one time format everywhere (the logs' too): UTC, ISO 8601
  const when = utcTime((ev.t || Date.now() / 1000) * 1000);
  let text;
  if (ev.type === "module") text = `${ev.module} on ${ev.node}: ${ev.from || "-"} → ${ev.to || "-"}`;
  else if (ev.type === "member") text = `member ${ev.member}: ${JSON.stringify(ev.after)}`;
  else text = `raft: leader ${ev.after.leader || "none"}, term ${ev.after.term}, quorum ${ev.after.has_quorum}`;
  const li = el("li");
  li.dataset.type = ev.type;
  li.append(el("span", when + " "));
  const chip = el("span", text, "chip");
  if (ev.type === "module") chip.classList.add(stateClass(ev.to));
  li.append(chip);
  $("timeline").prepend(li);
  while ($("timeline").children.length > 300) $("timeline").lastChild.remove();
}

function fillSelect(select, values) {
  const keep = select.value;
  select.replaceChildren(...values.map((v) => { const o = el("option", v); o.value = v; return o; }));
  if (values.includes(keep)) select.value = keep;
}

function fillSelects() {
  const names = S.modules.map((m) => m.name);
  for (const id of ["control-module", "log-module", "uc-module", "raw-module", "res-module"]) fillSelect($(id), names);
  fillSelect($("log-node"), nodesOf());
  renderControlNodes();
}

async function showResources() {
  const module = $("res-module").value;
  const body = $("resources").tBodies[0];
  body.replaceChildren();
  if (!module) return;
  const r = await api("GET", `/api/modules/${encodeURIComponent(module)}/resources`);
  for (const row of (r.body && r.body.nodes) || []) {
    if (!row.ok) { const tr = el("tr"); tr.append(el("td", row.node), el("td", row.error)); body.append(tr); continue; }
    for (const res of row.result.resources || []) {
      const tr = el("tr");
      tr.append(el("td", row.node), el("td", res.resource), el("td", res.value),
        el("td", utcTime(res.since * 1000)));
      body.append(tr);
    }
  }
}

// ---- control -------------------------------------------------------------------------
function renderControlNodes() {
  const box = $("control-nodes");
  const checked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  box.replaceChildren(el("span", "Nodes:"));
  for (const n of nodesOf()) {
    const label = el("label"), input = el("input");
    input.type = "checkbox"; input.value = n; input.className = "node-choice";
    input.checked = checked.has(n);
    label.append(input, document.createTextNode(" " + n));
    box.append(label);
  }
}

function buildControlButtons() {
  const box = $("control-buttons");
  for (const c of COMMANDS) {
    const b = el("button", c.replace("_", " "), "cmd" + (DANGEROUS[c] ? " danger" : ""));
    b.type = "button"; b.dataset.cmd = c;
    b.addEventListener("click", () => runCommand(c));
    box.append(b);
  }
}

function confirmDialog(text) {
  return new Promise((resolve) => {
    $("confirm-text").textContent = text;
    $("confirm").classList.remove("hidden");
    const done = (answer) => {
      $("confirm").classList.add("hidden");
      $("confirm-yes").onclick = null; $("confirm-no").onclick = null;
      resolve(answer);
    };
    $("confirm-yes").onclick = () => done(true);
    $("confirm-no").onclick = () => done(false);
  });
}

async function runCommand(command) {
  const module = $("control-module").value;
  const nodes = [...document.querySelectorAll("#control-nodes input:checked")].map((i) => i.value);
  const out = $("control-result");
  if (!module || !nodes.length) { out.textContent = "choose a module and at least one node"; return; }
  const body = { nodes };
  if ($("control-fullsync").checked && (command === "prim" || command === "second")) body.fullsync = true;
  if (command === "primforce") {
    if (nodes.length !== 1) { out.textContent = "primforce: choose exactly one node, never several"; return; }
    body.force = true;
  }
  if (DANGEROUS[command] && !(await confirmDialog(`${command} ${module} on ${nodes.join(", ")}: ${DANGEROUS[command]}. Go on?`))) {
    out.textContent = `${command}: cancelled`;
    return;
  }
  out.textContent = `${command} ${module} on ${nodes.join(", ")}...`;
  let r = await api("POST", `/api/modules/${encodeURIComponent(module)}/commands/${command}`, body);
  // second on the only current copy: the daemon refuses without force; ask, then force
  if (command === "second" && r.status === 409 && JSON.stringify(r.body).includes("only current copy")
      && await confirmDialog(`the copy on ${nodes.join(", ")} is the only current copy of ${module}: second discards it. Overwrite it?`)) {
    r = await api("POST", `/api/modules/${encodeURIComponent(module)}/commands/second`, { ...body, force: true });
  }
  out.textContent = `${r.status} ${JSON.stringify(r.body, null, 2)}`;
  out.dataset.status = String(r.status);
}

// ---- configuration -------------------------------------------------------------------
function showReport(box, r) {
  box.replaceChildren();
  const b = r.body || {};
  const head = el("p", r.status === 200 ? (b.installed ? `installed ${b.module} (${b.mode}) on every node`
    : `${b.module}: no error`) : (b.error || `failed (${r.status})`), r.status === 200 ? "" : "error");
  head.dataset.status = String(r.status);
  box.append(head);
  if (b.errors && b.errors.length) { const ul = el("ul", null, "errors"); for (const e of b.errors) ul.append(el("li", e)); box.append(ul); }
  if (b.warnings && b.warnings.length) { const ul = el("ul", null, "warnings"); for (const w of b.warnings) ul.append(el("li", "warning: " + w)); box.append(ul); }
}

async function upload(checkOnly) {
  const file = $("upload-file").files[0], box = $("upload-result");
  const name = $("upload-name").value || (file ? file.name.replace(/\.safe$/, "") : "");
  if (!file || !name) { box.textContent = "choose a .safe file and a module name"; return; }
  const data = await file.arrayBuffer();
  if (!checkOnly && !(await confirmDialog(`install ${name} on every node?`))) return;
  box.textContent = checkOnly ? "checking..." : "installing...";
  const r = await api("PUT", `/api/modules/${encodeURIComponent(name)}/package${checkOnly ? "?check=true" : ""}`, undefined, data);
  showReport(box, r);
}

async function loadUserconfig(target) {
  const module = $("uc-module").value;
  if (!module) return;
  const r = await api("GET", `/api/modules/${encodeURIComponent(module)}/userconfig`);
  if (r.status === 200) $("uc-text").value = r.body.userconfig;
  else showReport($("uc-result"), r);
}

async function saveUserconfig(checkOnly) {
  const module = $("uc-module").value;
  if (!module) return;
  if (!checkOnly && !(await confirmDialog(`install ${module} with this userconfig.xml on every node? (the module must be stopped everywhere)`))) return;
  const r = await api("PUT", `/api/modules/${encodeURIComponent(module)}/userconfig`,
    { userconfig: $("uc-text").value, check_only: checkOnly });
  showReport($("uc-result"), r);
}

async function uninstall() {
  const module = $("uc-module").value;
  if (!module || !(await confirmDialog(`uninstall ${module} from every node?`))) return;
  const r = await api("DELETE", `/api/modules/${encodeURIComponent(module)}`);
  $("uc-result").textContent = `${r.status} ${JSON.stringify(r.body)}`;
}

// ---- logs ----------------------------------------------------------------------------
function logQuery() {
  return new URLSearchParams({ node: $("log-node").value, kind: $("log-kind").value,
    lines: $("log-lines").value || "200", filter: $("log-filter").value });
}

function stopLogStream() { if (S.logStream) { S.logStream.close(); S.logStream = null; } }

async function showLog() {
  stopLogStream();
  const module = $("log-module").value, out = $("log-out");
  $("log-error").textContent = "";
  if (!module || !$("log-node").value) return;
  const path = `/api/modules/${encodeURIComponent(module)}/log`;
  if (!$("log-follow").checked) {
    const r = await api("GET", `${path}?${logQuery()}`);
    if (r.status !== 200) { $("log-error").textContent = (r.body && r.body.error) || r.status; return; }
    out.textContent = r.body.lines.join("\n");
    return;
  }
  out.textContent = "";
  const es = new EventSource(`${path}/stream?${logQuery()}`);
  S.logStream = es;
  es.addEventListener("lines", (e) => {
    const d = JSON.parse(e.data);
    if (d.skipped) out.append(`[... ${d.skipped} lines skipped]\n`);
    if (d.lines.length) out.append(d.lines.join("\n") + "\n");
    out.scrollTop = out.scrollHeight;
  });
  es.addEventListener("error", (e) => { $("log-error").textContent = e.data ? JSON.parse(e.data).error : "stream interrupted"; });
}

// ---- advanced ------------------------------------------------------------------------
async function renderAdvanced() {
  $("raw-cluster").textContent = JSON.stringify(S.cluster, null, 2);
  const dl = $("settings");
  dl.replaceChildren();
  const add = (k, v) => dl.append(el("dt", k), el("dd", v));
  add("connected to", location.origin);
  add("user", `${S.user} (${S.role})`);
  add("members' consoles", ((S.cluster && S.cluster.members) || []).filter((m) => m.api).map((m) => `${m.name} ${m.api}`).join(" · "));
  add("live events", "server-sent events, /api/events");
  const users = $("users").tBodies[0];
  users.replaceChildren();
  if (may("admin")) {
    const r = await api("GET", "/api/users");
    for (const u of (r.body && r.body.users) || []) { const tr = el("tr"); tr.append(el("td", u.name), el("td", u.role)); users.append(tr); }
  } else {
    const tr = el("tr"); tr.append(el("td", "admin only")); users.append(tr);
  }
}

async function showRawXml() {
  const module = $("raw-module").value;
  if (!module) return;
  const r = await api("GET", `/api/modules/${encodeURIComponent(module)}/userconfig`);
  $("raw-xml").textContent = r.status === 200 ? r.body.userconfig : `${r.status}: ${(r.body && r.body.error) || ""}`;
}

// ---- start ---------------------------------------------------------------------------
async function start() {
  buildControlButtons();
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const r = await api("POST", "/api/login", { user: $("login-user").value, password: $("login-password").value });
    if (r.status === 200) { $("login-password").value = ""; await loggedIn(r.body); }
    else $("login-error").textContent = (r.body && r.body.error) || `login failed (${r.status})`;
  });
  $("logout").addEventListener("click", async () => { await api("POST", "/api/logout"); showLogin("logged out"); });
  $("res-show").addEventListener("click", showResources);
  $("upload-check").addEventListener("click", () => upload(true));
  $("upload-install").addEventListener("click", () => upload(false));
  $("upload-file").addEventListener("change", () => {
    const f = $("upload-file").files[0];
    if (f && !$("upload-name").value) $("upload-name").value = f.name.replace(/\.safe$/, "");
  });
  $("uc-load").addEventListener("click", loadUserconfig);
  $("uc-check").addEventListener("click", () => saveUserconfig(true));
  $("uc-save").addEventListener("click", () => saveUserconfig(false));
  $("uc-uninstall").addEventListener("click", uninstall);
  $("log-show").addEventListener("click", showLog);
  $("log-follow").addEventListener("change", showLog);
  $("raw-show").addEventListener("click", showRawXml);
  setInterval(() => { if (S.user && S.events) refreshSession(); }, 60000);

  // arriving from another member that died: a handoff token in the fragment
  const params = new URLSearchParams(location.hash.slice(1));
  history.replaceState(null, "", "/console/");
  if (params.get("tab")) S.tab = params.get("tab");
  if (params.get("handoff")) {
    const r = await api("POST", "/api/handoff", { token: params.get("handoff") });
    if (r.status === 200) { await loggedIn(r.body); return; }
  }
  const r = await api("GET", "/api/session");
  if (r.status === 200) await loggedIn(r.body);
  else showLogin("");
}

document.addEventListener("DOMContentLoaded", start);
