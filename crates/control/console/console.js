// The Tessera Console: one page served by the control plane, reading the control plane's own
// API with the operator's credential (docs/observability.md). Plain JavaScript, no build.
"use strict";

const main = document.getElementById("main");
const KEY = "tessera-console-credential";
let timer = null;

// A credential handed over in the URL's fragment (`tessera up` prints such a URL for a local
// system) is kept for this tab and taken out of the address bar.
(function takeCredentialFromUrl() {
  const m = location.hash.match(/[#?&]credential=([^&]+)/);
  if (m) {
    sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
    let rest = location.hash.replace(/[?&]?credential=[^&]+/, "");
    if (rest === "#" || rest === "") rest = "#/";
    history.replaceState(null, "", location.pathname + rest);
  }
})();

function credential() { return sessionStorage.getItem(KEY); }

async function api(path, options = {}) {
  const resp = await fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), authorization: "Bearer " + credential() },
  });
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = text; }
  if (resp.status === 401) { sessionStorage.removeItem(KEY); render(); throw new Error("signed out"); }
  if (!resp.ok) {
    const why = body && body.error ? body.error.message : String(text);
    throw new Error(resp.status + ": " + why);
  }
  return body;
}

function esc(s) {
  return String(s === undefined || s === null ? "" : s)
    .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

function duration(us) {
  if (us >= 1e6) return (us / 1e6).toFixed(2) + " s";
  if (us >= 1e3) return (us / 1e3).toFixed(1) + " ms";
  return us + " µs";
}

function clock(us) {
  const d = new Date(us / 1000);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function params(query) {
  const out = {};
  new URLSearchParams(query || "").forEach((v, k) => { if (v) out[k] = v; });
  return out;
}

function setActive(page) {
  document.querySelectorAll("header nav a").forEach(a => {
    a.classList.toggle("active", a.getAttribute("href") === "#/" + page);
  });
}

function loginPage() {
  main.innerHTML = `
    <div class="login">
      <h1>Sign in</h1>
      <p class="muted">The console reads the system as its administrator. Paste the admin's
      credential: <code>tessera credential admin</code> prints it.</p>
      <form id="login"><input id="cred" autocomplete="off" placeholder="credential">
      <button>Sign in</button></form>
    </div>`;
  document.getElementById("login").onsubmit = e => {
    e.preventDefault();
    sessionStorage.setItem(KEY, document.getElementById("cred").value.trim());
    location.hash = "#/";
    render();
  };
}

function processRow(service, instance, up, version, address, started, pid, restarts) {
  const now = Date.now() / 1000;
  const uptime = started ? formatUptime(Math.max(0, Math.round(now - Number(started)))) : "";
  const restarted = Number(restarts || 0);
  return `<tr class="process"><td>${esc(service)}</td><td>${esc(instance)}</td>
    <td><span class="pill ${up ? "ok" : "error"}">${up ? "up" : "not answering"}</span></td>
    <td>${esc(version)}</td><td>${esc(address)}</td><td>${esc(uptime)}</td><td>${esc(pid)}</td>
    <td>${restarted ? `<span class="pill error">${restarted}</span>` : "0"}</td></tr>`;
}

async function servicesPage() {
  const [catalog, platform] = await Promise.all([
    api("/v1/services"),
    api("/v1/telemetry/platform").catch(() => ({ processes: [] })),
  ]);
  let rows = "";
  for (const [service, instances] of Object.entries(catalog.services || {})) {
    for (const i of instances) {
      const m = i.metadata || {};
      rows += processRow(service, i.id, true, i.version, i.address, m.started, m.pid, m.restarts);
    }
  }
  let platformRows = "";
  for (const p of platform.processes || []) {
    const proc = p.process || {};
    platformRows += processRow(p.service, p.instance, p.up, proc.version, p.admin || "", proc.started, proc.pid, proc.restarts);
  }
  const head = `<tr><th>service</th><th>instance</th><th>health</th><th>version</th>
    <th>address</th><th>uptime</th><th>pid</th><th>restarts</th></tr>`;
  main.innerHTML = `<h1>Services</h1>
    <table id="services">${head}${rows || '<tr><td colspan="8" class="muted">no instance registered</td></tr>'}</table>
    <h2>Platform</h2><table id="platform">${head.replace("<th>address</th>", "<th>admin listener</th>")}${platformRows}</table>`;
  timer = setTimeout(() => render(), 5000);
}

function formatUptime(s) {
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function sparkline(points, key, color, max) {
  const w = 400, h = 80;
  if (!points.length) return `<svg viewBox="0 0 ${w} ${h}"></svg>`;
  const values = points.map(p => p[key] || 0);
  const top = Math.max(max || 0, ...values, 1e-9);
  const step = points.length > 1 ? w / (points.length - 1) : w;
  const path = values.map((v, i) => `${i ? "L" : "M"}${(i * step).toFixed(1)},${(h - (v / top) * (h - 4) - 2).toFixed(1)}`).join(" ");
  return `<path d="${path}" fill="none" stroke="${color}" stroke-width="1.5"/>`;
}

async function routesPage() {
  const body = await api("/v1/telemetry/metrics");
  const cards = (body.routes || []).map(r => {
    const pts = r.points || [];
    const last = pts[pts.length - 1] || {};
    const maxLatency = Math.max(...pts.map(p => p.p99_ms || 0), 0);
    return `<div class="chart" data-route="${esc(r.service + " " + r.route)}">
      <h3>${esc(r.service)} <span class="muted">${esc(r.route)}</span></h3>
      <div class="legend">rate ${(last.rate || 0).toFixed(1)}/s · errors ${(last.errors || 0).toFixed(2)}/s ·
        p50 ${last.p50_ms == null ? "–" : last.p50_ms.toFixed(2) + " ms"} · p99 ${last.p99_ms == null ? "–" : last.p99_ms.toFixed(2) + " ms"}</div>
      <svg viewBox="0 0 400 80" preserveAspectRatio="none">${sparkline(pts, "rate", "#4c6ef5")}${sparkline(pts, "errors", "#e03131", Math.max(...pts.map(p => p.rate || 0)))}</svg>
      <svg viewBox="0 0 400 80" preserveAspectRatio="none">${sparkline(pts, "p99_ms", "#f08c00", maxLatency)}${sparkline(pts, "p50_ms", "#2f9e44", maxLatency)}</svg>
      <div class="legend"><span style="color:#4c6ef5">rate</span> · <span style="color:#e03131">errors</span> ·
        <span style="color:#2f9e44">p50</span> · <span style="color:#f08c00">p99</span></div></div>`;
  });
  main.innerHTML = `<h1>Routes</h1><div class="charts">${cards.join("") || '<p class="muted">no requests yet</p>'}</div>`;
  timer = setTimeout(() => render(), 5000);
}

async function tracesPage(query) {
  const q = params(query);
  const search = new URLSearchParams(q).toString();
  const body = await api("/v1/telemetry/traces" + (search ? "?" + search : ""));
  const rows = (body.traces || []).map(t => `
    <tr class="clickable trace" data-id="${esc(t.trace_id)}">
      <td>${esc(clock(t.start_us))}</td>
      <td>${esc(t.root.service)} <b>${esc(t.root.name)}</b></td>
      <td>${esc(t.root.http_status ?? "")}</td><td>${esc(duration(t.duration_us))}</td>
      <td>${esc(t.spans)}</td><td>${t.errors ? `<span class="pill error">${t.errors}</span>` : ""}</td>
      <td class="muted">${esc(t.services.join(", "))}</td><td class="muted">${esc(t.trace_id.slice(0, 8))}</td></tr>`);
  main.innerHTML = `<h1>Traces</h1>
    <form class="filters" id="filters">
      <input name="service" placeholder="service" value="${esc(q.service)}">
      <input name="route" placeholder="route" value="${esc(q.route)}">
      <select name="status"><option value="">any status</option>
        <option value="error" ${q.status === "error" ? "selected" : ""}>errors</option>
        <option value="ok" ${q.status === "ok" ? "selected" : ""}>ok</option></select>
      <input name="min_ms" placeholder="slower than (ms)" value="${esc(q.min_ms)}" size="12">
      <button>Search</button></form>
    <table id="traces"><tr><th>time</th><th>root</th><th>status</th><th>duration</th><th>spans</th>
    <th>errors</th><th>services</th><th>trace</th></tr>${rows.join("") || '<tr><td colspan="8" class="muted">no trace matches</td></tr>'}</table>`;
  document.getElementById("filters").onsubmit = e => {
    e.preventDefault();
    const form = new URLSearchParams(new FormData(e.target));
    for (const [k, v] of [...form]) if (!v) form.delete(k);
    location.hash = "#/traces?" + form.toString();
  };
  document.querySelectorAll("tr.trace").forEach(tr => {
    tr.onclick = () => { location.hash = "#/trace/" + tr.dataset.id; };
  });
}

async function tracePage(id) {
  const trace = await api("/v1/telemetry/traces/" + encodeURIComponent(id));
  const spans = trace.spans || [];
  const ids = new Set(spans.map(s => s.span_id));
  const children = {};
  const roots = [];
  for (const s of spans) {
    if (s.parent_id && ids.has(s.parent_id)) (children[s.parent_id] = children[s.parent_id] || []).push(s);
    else roots.push(s);
  }
  const byStart = (a, b) => a.start_us - b.start_us;
  roots.sort(byStart);
  Object.values(children).forEach(l => l.sort(byStart));
  const start = Math.min(...spans.map(s => s.start_us));
  const end = Math.max(...spans.map(s => s.start_us + s.duration_us));
  const total = Math.max(end - start, 1);
  const order = [];
  const walk = (s, depth) => { order.push([s, depth]); (children[s.span_id] || []).forEach(c => walk(c, depth + 1)); };
  roots.forEach(r => walk(r, 0));
  const services = new Set(spans.map(s => s.service));
  const rows = order.map(([s, depth]) => {
    const left = ((s.start_us - start) / total) * 100;
    const width = Math.max((s.duration_us / total) * 100, 0.2);
    return `<div class="span-row ${s.error ? "failed" : ""}" data-span="${esc(s.span_id)}">
      <div class="name" style="padding-left:${depth * 14}px" title="${esc(s.name)}">${s.error ? "✗ " : ""}${esc(s.name)}<span class="kind">${esc(s.kind)}</span></div>
      <div class="muted">${esc(s.service)}</div>
      <div class="track"><div class="bar" style="left:${left}%;width:${width}%"></div></div>
      <div class="dur">${esc(duration(s.duration_us))}</div></div>`;
  });
  const logs = (trace.logs || []).slice().sort((a, b) => a.ts_us - b.ts_us).map(l => logLine(l)).join("");
  main.innerHTML = `<h1>Trace <span class="muted">${esc(trace.trace_id)}</span></h1>
    <p class="muted" id="summary">${esc(duration(total))} · ${spans.length} spans · ${services.size} services</p>
    <div class="columns"><div><div class="waterfall" id="waterfall">${rows.join("")}</div>
      <div class="detail" id="detail"><span class="muted">Choose a span to see its attributes.</span></div></div>
      <div><h2>Log lines of this trace</h2><div class="logs" id="trace-logs">${logs || '<span class="muted">none</span>'}</div></div></div>`;
  const bySpan = Object.fromEntries(spans.map(s => [s.span_id, s]));
  document.querySelectorAll(".span-row").forEach(row => {
    row.onclick = () => {
      const s = bySpan[row.dataset.span];
      document.getElementById("detail").innerHTML = `<b>${esc(s.name)}</b>
        <span class="muted">${esc(s.service)} · ${esc(s.instance || "")} · ${esc(s.kind)} · ${esc(duration(s.duration_us))}</span>
        ${s.error ? `<p class="error">${esc(s.status_message || "failed")}</p>` : ""}
        <pre>${esc(JSON.stringify(s.attributes, null, 2))}</pre>`;
    };
  });
}

function logLine(l) {
  const fields = Object.entries(l.attributes || {}).filter(([k]) => k !== "target")
    .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
  const trace = l.trace_id ? ` <a href="#/trace/${esc(l.trace_id)}">·${esc(l.trace_id.slice(0, 8))}</a>` : "";
  return `<div class="logline" data-id="${esc(l.id)}">${esc(clock(l.ts_us))} ${esc(l.instance || l.service)} <span class="lvl-${esc(l.level)}">${esc(l.level)}</span> ${esc(l.body)} <span class="muted">${esc(fields)}</span>${trace}</div>`;
}

async function logsPage(query) {
  const q = params(query);
  const search = new URLSearchParams(q);
  const first = await api("/v1/telemetry/logs?" + search.toString());
  let last = first.last || 0;
  main.innerHTML = `<h1>Logs</h1>
    <form class="filters" id="filters">
      <input name="service" placeholder="service" value="${esc(q.service)}">
      <select name="level"><option value="">any level</option>
        ${["debug", "info", "warn", "error"].map(l => `<option ${q.level === l ? "selected" : ""}>${l}</option>`).join("")}</select>
      <input name="text" placeholder="text" value="${esc(q.text)}">
      <input name="trace_id" placeholder="trace id" value="${esc(q.trace_id)}" size="34">
      <button>Filter</button> <span class="muted">live</span></form>
    <div class="logs" id="logs">${(first.logs || []).slice().reverse().map(logLine).join("")}</div>`;
  document.getElementById("filters").onsubmit = e => {
    e.preventDefault();
    const form = new URLSearchParams(new FormData(e.target));
    for (const [k, v] of [...form]) if (!v) form.delete(k);
    location.hash = "#/logs?" + form.toString();
  };
  const box = document.getElementById("logs");
  box.scrollTop = box.scrollHeight;
  const tail = async () => {
    const more = new URLSearchParams(q);
    more.set("after", last);
    more.set("since", Date.now() - 24 * 3600 * 1000);
    try {
      const next = await api("/v1/telemetry/logs?" + more.toString());
      const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
      box.insertAdjacentHTML("beforeend", (next.logs || []).map(logLine).join(""));
      if (atBottom) box.scrollTop = box.scrollHeight;
      last = next.last || last;
    } catch (_) { /* tried again next time */ }
    timer = setTimeout(tail, 1000);
  };
  timer = setTimeout(tail, 1000);
}

async function resiliencePage() {
  const body = await api("/v1/telemetry/resilience");
  const label = {
    tessera_retries_total: "retries",
    tessera_retry_budget_exhausted_total: "retry budget spent",
    tessera_breaker_rejected_total: "breaker rejections",
    tessera_bulkhead_rejected_total: "bulkhead rejections",
    tessera_outlier_ejections_total: "ejections",
    tessera_rate_limited_total: "rate-limited",
  };
  const sections = (body.processes || []).map(p => {
    const upstreams = ((p.status || {}).upstreams) || {};
    const rows = Object.entries(upstreams).map(([name, g]) => {
      const instances = Object.entries(g.instances || {});
      const ejected = instances.filter(([, i]) => i.ejected).map(([id]) => id);
      const cls = g.breaker === "closed" ? "ok" : "error";
      return `<tr class="breaker"><td>${esc(name)}</td><td><span class="pill ${cls}">${esc(g.breaker)}</span></td>
        <td>${esc(g.inFlight)} / ${esc(g.maxConcurrent)}</td><td>${esc(instances.length)}</td>
        <td>${ejected.length ? `<span class="error">${esc(ejected.join(", "))}</span>` : ""}</td></tr>`;
    }).join("");
    const counters = Object.entries(p.counters || {}).map(([k, v]) =>
      `<span class="pill">${esc(label[k] || k)} ${esc(Math.round(v))}</span>`).join(" ");
    return `<h2>${esc(p.instance)} <span class="muted">${esc(p.service)}</span></h2>
      <p>${counters || '<span class="muted">no scrape yet</span>'}</p>
      ${p.status ? `<table><tr><th>calls to</th><th>breaker</th><th>in flight / bulkhead</th><th>instances</th><th>ejected</th></tr>
        ${rows || '<tr><td colspan="5" class="muted">no calls yet</td></tr>'}</table>` : '<p class="muted">its admin listener did not answer</p>'}`;
  });
  main.innerHTML = `<h1>Resilience</h1>${sections.join("") || '<p class="muted">no process</p>'}`;
  timer = setTimeout(() => render(), 5000);
}

async function eventsPage() {
  const body = await api("/v1/topics");
  const topics = body.topics || [];
  let rows = "";
  const groups = new Set();
  for (const t of topics) {
    for (const [g, info] of Object.entries(t.groups || {})) {
      groups.add(g);
      rows += `<tr><td>${esc(t.name)}</td><td>${esc((t.ends || []).length)}</td><td>${esc(g)}</td>
        <td>${esc(info.lag)}</td><td class="muted">${esc((info.committed || []).join(", "))}</td></tr>`;
    }
    if (!Object.keys(t.groups || {}).length) {
      rows += `<tr><td>${esc(t.name)}</td><td>${esc((t.ends || []).length)}</td><td class="muted">no group</td><td></td><td></td></tr>`;
    }
  }
  let dead = "";
  for (const g of [...groups].sort()) {
    let letters = [];
    try { letters = (await api("/v1/deadletters/" + encodeURIComponent(g))).deadLetters || []; } catch (_) { continue; }
    if (!letters.length) continue;
    dead += `<h2>${esc(g)} <button class="replay" data-group="${esc(g)}">Replay ${letters.length}</button></h2>
      <table>${letters.map(d => `<tr><td>${esc(d.event.type)}</td><td>${esc(d.event.subject)}</td>
        <td class="muted">${esc((d.event.deadletterreason || ""))}</td></tr>`).join("")}</table>`;
  }
  main.innerHTML = `<h1>Events</h1>
    <table id="topics"><tr><th>topic</th><th>partitions</th><th>consumer group</th><th>lag</th><th>committed</th></tr>${rows}</table>
    <h1 style="margin-top:22px">Dead letters</h1>${dead || '<p class="muted">none</p>'}`;
  document.querySelectorAll("button.replay").forEach(b => {
    b.onclick = async () => {
      b.disabled = true;
      const r = await api("/v1/deadletters/" + encodeURIComponent(b.dataset.group) + "/replay", { method: "POST" });
      b.textContent = `replayed ${r.replayed}`;
    };
  });
}

function when(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function ago(ms) {
  const s = Math.round((Date.now() - ms) / 1000);
  if (s < 0) return "in " + formatUptime(-s);
  return formatUptime(s) + " ago";
}

const STATE_CLASS = { running: "", completed: "ok", failed: "error" };

// A saga count as shown: a service counts up to 10,000 of a state, then says so.
function count(n) { return n >= 10000 ? "10000+" : String(n || 0); }

async function sagasPage(query) {
  const q = params(query);
  const search = new URLSearchParams(q).toString();
  const body = await api("/v1/sagas" + (search ? "?" + search : ""));
  const services = body.services || [];
  const sections = services.map(svc => {
    if (svc.error) {
      return `<h2>${esc(svc.service)}</h2><p class="error">${esc(svc.instance)}: ${esc(svc.error)}</p>`;
    }
    const counts = {};
    for (const [name, state, n] of svc.counts || []) (counts[name] = counts[name] || {})[state] = n;
    const tiles = (svc.names || []).map(name => `<div class="tile"><b>${esc(name)}</b>
      ${["running", "completed", "failed"].map(state =>
        `<a class="state" href="#/sagas?status=${state}"><span class="pill ${STATE_CLASS[state]}">${state} ${esc(count((counts[name] || {})[state]))}</span></a>`).join(" ")}</div>`).join("");
    const rows = (svc.sagas || []).map(g => {
      const overdue = g.status === "running" && g.deadline && g.deadline < Date.now();
      return `<tr class="clickable saga" data-href="#/saga/${encodeURIComponent(svc.service)}/${encodeURIComponent(g.name)}/${encodeURIComponent(g.id)}">
        <td>${esc(g.name)}</td><td class="mono">${esc(g.id)}</td>
        <td><span class="pill ${STATE_CLASS[g.status] || ""}">${esc(g.status)}</span></td>
        <td>${esc(g.step)}</td><td class="muted">${esc(g.reason || "")}</td>
        <td>${esc(when(g.started))}</td><td>${esc(ago(g.updated))}</td>
        <td class="${overdue ? "error" : "muted"}">${g.deadline ? esc(ago(g.deadline)) : ""}</td></tr>`;
    }).join("");
    return `<h2>${esc(svc.service)} <span class="muted">${esc(svc.instance)}</span></h2>
      <div class="tiles">${tiles}</div>
      <table class="sagas"><tr><th>saga</th><th>id</th><th>state</th><th>step</th><th>reason</th><th>started</th>
      <th>moved</th><th>step times out</th></tr>${rows || '<tr><td colspan="8" class="muted">none</td></tr>'}</table>`;
  });
  const filter = ["", "running", "completed", "failed"].map(state =>
    `<a href="#/sagas${state ? "?status=" + state : ""}" class="${(q.status || "") === state ? "active" : ""}">${state || "all"}</a>`).join(" · ");
  main.innerHTML = `<h1>Sagas</h1><p class="filterlinks">${filter}</p>
    ${sections.join("") || '<p class="muted">no service of this system runs sagas</p>'}`;
  document.querySelectorAll("tr.saga").forEach(tr => { tr.onclick = () => { location.hash = tr.dataset.href; }; });
  timer = setTimeout(() => render(), 5000);
}

const ACTION_LABEL = {
  "command": "command sent", "ok": "answered ok", "failed": "answered failed", "timeout": "timed out",
  "compensate": "compensation sent", "completed": "completed", "late-reply": "late answer",
  "retry": "sent again by an operator", "abort": "compensated by an operator",
};
const ACTION_CLASS = { ok: "ok", completed: "ok", failed: "error", timeout: "error", abort: "error", compensate: "warn", "late-reply": "muted" };

async function sagaPage(service, name, id, notice) {
  const path = `/v1/sagas/${encodeURIComponent(service)}/${encodeURIComponent(name)}/${encodeURIComponent(id)}`;
  const saga = await api(path);
  const history = saga.history || [];
  const start = saga.started || (history[0] || {}).at || saga.updated;
  // Each step's fate, from its history: what the timeline's strip shows.
  const fate = {};
  for (const e of history) {
    if (!e.step) continue;
    if (e.action === "compensate") fate[e.step] = "compensated";
    else if (e.action === "ok" && fate[e.step] !== "compensated") fate[e.step] = "done";
    else if (["failed", "timeout", "abort"].includes(e.action)) fate[e.step] = e.action === "failed" ? "failed" : "stopped";
    else if (!fate[e.step]) fate[e.step] = "waiting";
  }
  if (saga.status === "running" && !fate[saga.step]) fate[saga.step] = "waiting";
  const strip = (saga.steps || []).map(step =>
    `<div class="step ${esc(fate[step] || "not-run")}"><b>${esc(step)}</b><span>${esc(fate[step] || "not run")}</span></div>`).join('<div class="arrow">→</div>');
  const rows = history.map(e => `<tr class="entry ${esc(e.action)}">
      <td class="mono">+${esc(((e.at - start) / 1000).toFixed(3))} s</td><td class="muted">${esc(when(e.at))}</td>
      <td>${esc(e.step || name)}</td>
      <td class="${ACTION_CLASS[e.action] || ""}">${esc(ACTION_LABEL[e.action] || e.action)}</td>
      <td class="muted">${esc(e.reason || "")}${e.by ? " by " + esc(e.by) : ""}</td></tr>`).join("");
  const running = saga.status === "running";
  main.innerHTML = `<h1>Saga ${esc(name)} <span class="muted mono">${esc(id)}</span></h1>
    <p><span class="pill ${STATE_CLASS[saga.status] || ""}" id="saga-state">${esc(saga.status)}</span>
      <span class="muted">${esc(service)} · on step <b>${esc(saga.step)}</b>
      ${saga.reason ? " · " + esc(saga.reason) : ""}
      ${saga.deadline ? " · the step times out " + esc(ago(saga.deadline)) : ""}</span>
      ${saga.traceId ? ` · <a href="#/trace/${esc(saga.traceId)}">its trace</a>` : ""}</p>
    ${notice ? `<p class="${notice.ok ? "ok" : "error"}" id="notice">${esc(notice.text)}</p>` : ""}
    <div class="steps">${strip}</div>
    ${running ? `<p class="actions"><button id="retry">Send the step again</button>
      <button id="compensate" class="danger">Compensate now</button>
      <span class="muted">an admin's actions; recorded in the saga's history and the audit log</span></p>` : ""}
    <div class="columns"><div><h2>Timeline</h2>
      <table id="timeline"><tr><th>after start</th><th>time</th><th>step</th><th>what happened</th><th></th></tr>
      ${rows || '<tr><td colspan="5" class="muted">no history kept for this saga</td></tr>'}</table></div>
      <div><h2>Data</h2><pre class="detail">${esc(JSON.stringify(saga.data, null, 2))}</pre></div></div>`;
  const act = async (action, question) => {
    if (!confirm(question)) return;
    let result;
    try {
      await api(path + "/" + action, { method: "POST" });
      result = { ok: true, text: action === "retry" ? "The step's command was sent again." : "Compensations were sent; the saga failed." };
    } catch (e) {
      result = { ok: false, text: e.message };
    }
    await sagaPage(service, name, id, result);
  };
  if (running) {
    document.getElementById("retry").onclick = () => act("retry", `Send step ${saga.step} of ${name} ${id} again?`);
    document.getElementById("compensate").onclick = () => act("compensate", `Compensate ${name} ${id} now? Its steps so far are undone and it fails.`);
  }
}

// Each sending service's mail queue (docs/mail.md), and the admin's action on its dead messages.
async function mailPage(notice) {
  const body = await api("/v1/mail");
  const sections = (body.services || []).map(svc => {
    if (svc.error) {
      return `<h2>${esc(svc.service)}</h2><p class="error">${esc(svc.instance)}: ${esc(svc.error)}</p>`;
    }
    const q = svc.queue;
    const rows = (q.dead_messages || []).map(m => `<tr class="dead-mail">
        <td class="mono">${esc(m.key)}</td><td class="mono">${esc(m.to_user)}</td><td>${esc(m.subject)}</td>
        <td>${esc(m.attempts)}</td><td class="error">${esc(m.error || "")}</td><td>${esc(when(m.created))}</td></tr>`).join("");
    return `<h2>${esc(svc.service)} <span class="muted">${esc(svc.instance)}</span></h2>
      <div class="tiles"><div class="tile"><span class="pill">waiting ${esc(q.pending)}</span>
        <span class="pill ok">sent ${esc(q.sent)}</span>
        <span class="pill ${q.dead ? "error" : ""}">dead ${esc(q.dead)}</span></div></div>
      ${q.dead ? `<p class="actions"><button class="requeue" data-service="${esc(svc.service)}">Send the dead messages again</button>
        <span class="muted">the admin's, once their cause is fixed; audited</span></p>` : ""}
      <table class="mail"><tr><th>cause</th><th>to user</th><th>subject</th><th>attempts</th><th>why it died</th><th>queued</th></tr>
      ${rows || '<tr><td colspan="6" class="muted">no dead message</td></tr>'}</table>`;
  });
  main.innerHTML = `<h1>Mail</h1>
    ${notice ? `<p class="${notice.ok ? "ok" : "error"}" id="notice">${esc(notice.text)}</p>` : ""}
    ${sections.join("") || '<p class="muted">no service of this system sends mail (MAIL_SMTP_HOST)</p>'}`;
  document.querySelectorAll("button.requeue").forEach(button => {
    button.onclick = async () => {
      const service = button.dataset.service;
      if (!confirm(`Send ${service}'s dead messages again?`)) return;
      clearTimeout(timer); // the page's refresh would take the answer's notice away
      let result;
      try {
        const done = await api(`/v1/mail/${encodeURIComponent(service)}/requeue`, { method: "POST" });
        result = { ok: true, text: `${done.requeued} messages queued again.` };
      } catch (e) {
        result = { ok: false, text: e.message };
      }
      await mailPage(result);
    };
  });
  if (!notice) timer = setTimeout(() => render(), 5000);
}

async function render() {
  clearTimeout(timer);
  if (!credential()) { setActive(""); return loginPage(); }
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query] = hash.split("?");
  const [page, arg, ...rest] = path.split("/").map(part => {
    try { return decodeURIComponent(part); } catch (_) { return part; }
  });
  setActive(page || "");
  document.getElementById("who").textContent = "signed in";
  try {
    if (page === "routes") await routesPage();
    else if (page === "traces") await tracesPage(query);
    else if (page === "trace" && arg) await tracePage(arg);
    else if (page === "logs") await logsPage(query);
    else if (page === "events") await eventsPage();
    else if (page === "resilience") await resiliencePage();
    else if (page === "sagas") await sagasPage(query);
    else if (page === "saga" && rest.length === 2) await sagaPage(arg, rest[0], rest[1]);
    else if (page === "mail") await mailPage();
    else await servicesPage();
  } catch (e) {
    main.innerHTML = `<p class="error" id="failed">${esc(e.message)}</p>`;
  }
}

window.addEventListener("hashchange", render);
render();
