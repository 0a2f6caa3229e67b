// Tessera Invest's dashboard: plain JavaScript, served by the gateway as static files
// (`[[files]]`), talking to the system's API on the same origin. No build step.
//
// Signing in asks `auth` for an access token, kept in this tab's sessionStorage; `#token=…` in
// the URL signs in with a token already made (what the browser test does). Alerts arrive live
// on a WebSocket (`/api/alerts/live`, the token offered as a subprotocol, as a browser cannot
// set Authorization on one); while it is down they are polled each second. The rest is
// polled: the portfolio, the chart and the signal every 2 s, news every 5 s.
"use strict";

const $ = (id) => document.getElementById(id);
const money = (cents) => (cents < 0 ? "-" : "") + "$" + (Math.abs(cents) / 100).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const time = (ms) => new Date(ms).toLocaleTimeString("en-GB");

let token = null;
let ticker = null;
let chart = null;
let alertsSince = 0;
let timers = [];
let socket = null;

function fail(message) {
  const el = $("failed");
  el.textContent = message;
  el.hidden = false;
}

// One API call: the envelope's data, or an Error with the envelope's message.
async function api(method, path, body) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = "Bearer " + token;
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await resp.text();
  const envelope = text ? JSON.parse(text) : {};
  if (resp.status === 401 && token) {
    signOut();
    throw new Error("signed out");
  }
  if (!resp.ok) throw new Error((envelope.error && envelope.error.message) || resp.statusText);
  return envelope.data;
}

function signOut() {
  token = null;
  sessionStorage.removeItem("invest-token");
  timers.forEach(clearInterval);
  timers = [];
  if (socket) socket.close();
  socket = null;
  $("board").hidden = true;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  $("sign-in").hidden = false;
}

async function signIn(email, password, create) {
  if (create) await api("POST", "/api/auth/signup", { email, password, name: email.split("@")[0] });
  const tokens = await api("POST", "/api/auth/login", { email, password });
  start(tokens.accessToken || tokens.access_token);
}

async function start(accessToken) {
  token = accessToken;
  sessionStorage.setItem("invest-token", token);
  $("sign-in").hidden = true;
  $("board").hidden = false;
  $("sign-out").hidden = false;
  try {
    const me = await api("GET", "/api/auth/me");
    $("who").textContent = me.email || me.id;
  } catch (e) {
    return;
  }
  const tickers = await api("GET", "/api/market/tickers");
  $("ticker").innerHTML = tickers.map((t) => `<option value="${esc(t.ticker)}">${esc(t.ticker)} · ${esc(t.name)}</option>`).join("");
  const wanted = new URLSearchParams(location.hash.slice(1)).get("ticker");
  const portfolio = await refreshPortfolio();
  ticker = wanted || (portfolio.holdings[0] && portfolio.holdings[0].ticker) || tickers[0].ticker;
  $("ticker").value = ticker;
  await Promise.all([refreshChart(), refreshNews(), refreshAlerts(), refreshReport()]);
  timers.push(setInterval(() => refreshPortfolio().catch(() => {}), 2000));
  timers.push(setInterval(() => refreshChart().catch(() => {}), 2000));
  timers.push(setInterval(() => (socket && socket.live ? null : refreshAlerts().catch(() => {})), 1000));
  listen();
  timers.push(setInterval(() => refreshNews().catch(() => {}), 5000));
  timers.push(setInterval(() => refreshReport().catch(() => {}), 5000));
}

async function refreshPortfolio() {
  const p = await api("GET", "/api/portfolio");
  $("cash").textContent = money(p.cash);
  $("total").textContent = money(p.total);
  $("style").textContent = p.style;
  $("holdings").innerHTML = p.holdings
    .map((h) => `<tr data-ticker="${esc(h.ticker)}"><td>${esc(h.ticker)}</td><td>${h.quantity}</td>
      <td>${h.price === null ? "–" : money(h.price)}</td><td>${money(h.value)}</td>
      <td class="${h.pnl >= 0 ? "up" : "down"}">${money(h.pnl)}</td></tr>`)
    .join("") || `<tr><td colspan="5" class="muted">nothing held yet</td></tr>`;
  return p;
}

async function refreshReport() {
  const r = await api("GET", "/api/portfolio/report");
  $("notes").innerHTML = r.allocation
    .map((s) => `<li>${esc(s.sector)} <span class="muted">${(s.share * 100).toFixed(1)}%</span></li>`)
    .concat(r.notes.map((n) => `<li class="muted">${esc(n)}</li>`))
    .join("");
}

async function refreshChart() {
  const [candles, signal] = await Promise.all([
    api("GET", `/api/market/tickers/${encodeURIComponent(ticker)}/candles?width=1s&limit=180`),
    api("GET", `/api/signals/${encodeURIComponent(ticker)}`).catch(() => null),
  ]);
  const xs = candles.candles.map((c) => c.start / 1000);
  const closes = candles.candles.map((c) => c.close / 100);
  const last = closes[closes.length - 1];
  $("price").textContent = last === undefined ? "" : "$" + last.toFixed(2);
  const el = $("signal");
  el.textContent = signal ? signal.signal : "no signal yet";
  el.className = "signal " + (signal ? signal.signal : "");
  $("signal-reason").textContent = signal && signal.shortMa
    ? `5-tick average ${(signal.shortMa / 100).toFixed(2)}, 20-tick ${signal.longMa ? (signal.longMa / 100).toFixed(2) : "–"}`
    : "";
  const data = [xs, closes];
  if (!chart) {
    chart = new uPlot(
      { width: $("chart").clientWidth || 600, height: 280, series: [{}, { label: ticker, stroke: "#4c6ef5", width: 2 }], axes: [{}, { size: 60 }] },
      data,
      $("chart"),
    );
  } else {
    chart.setSeries(1, { label: ticker });
    chart.setData(data);
  }
  const similar = await api("GET", `/api/signals/${encodeURIComponent(ticker)}/similar`).catch(() => null);
  $("similar").innerHTML = similar && similar.matches.length
    ? similar.matches.map((m) => `<li>from tick ${m.fromTick}: distance ${m.distance}, then
        <span class="${m.followedBy >= 0 ? "up" : "down"}">${(m.followedBy * 100).toFixed(2)}%</span></li>`).join("")
    : `<li class="muted">not enough history yet</li>`;
}

async function refreshNews() {
  const news = await api("GET", "/api/market/news?limit=10");
  $("news").innerHTML = news
    .map((n) => `<li><span class="when">${time(n.published)}</span><b>${esc(n.sector)}</b> ${esc(n.headline)}
      <span class="${n.sentiment >= 0 ? "up" : "down"}">${n.sentiment >= 0 ? "+" : ""}${n.sentiment.toFixed(2)}</span></li>`)
    .join("") || `<li class="muted">no news yet</li>`;
}

// The live feed: each new alert as it is made; closed, it is opened again after a second (the
// poll above fills the gap meanwhile).
function listen() {
  if (!token) return;
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  socket = new WebSocket(scheme + location.host + "/api/alerts/live", ["tessera", "bearer." + token]);
  socket.onmessage = (m) => {
    const frame = JSON.parse(m.data);
    if (frame.type === "ready") {
      socket.live = true;
      $("alerts-live").textContent = "live";
    } else if (frame.type === "alert") {
      showAlerts([frame.data]);
    } else if (frame.type === "lagged") {
      refreshAlerts().catch(() => {}); // the socket missed some: the list has them all
    }
  };
  socket.onclose = () => {
    $("alerts-live").textContent = "polling";
    if (token) setTimeout(listen, 1000);
  };
}

// What came since the last alert seen, less five seconds: an alert committed a moment late
// with an earlier time is not skipped (the ones already shown are recognised by id).
async function refreshAlerts() {
  showAlerts(await api("GET", `/api/alerts?since=${Math.max(0, alertsSince - 5000)}&limit=50`));
}

function showAlerts(fresh) {
  fresh = fresh.filter((a) => !document.querySelector(`#alerts li[data-id="${CSS.escape(a.id)}"]`));
  if (!fresh.length) return;
  alertsSince = Math.max(alertsSince, ...fresh.map((a) => a.created));
  const list = $("alerts");
  const first = !list.children.length;
  const items = fresh
    .map((a) => `<li class="${first ? "" : "new"}" data-id="${esc(a.id)}" data-kind="${esc(a.kind)}"><span class="when">${time(a.created)}</span><b>${esc(a.title)}</b><br>${esc(a.body)}</li>`)
    .join("");
  list.insertAdjacentHTML("afterbegin", items);
  while (list.children.length > 50) list.lastChild.remove();

}

$("sign-in-form").addEventListener("submit", (e) => {
  e.preventDefault();
  signIn($("email").value, $("password").value, false).catch((err) => ($("sign-in-error").textContent = err.message));
});
$("sign-up").addEventListener("click", () => {
  signIn($("email").value, $("password").value, true).catch((err) => ($("sign-in-error").textContent = err.message));
});
$("sign-out").addEventListener("click", signOut);
$("ticker").addEventListener("change", () => {
  ticker = $("ticker").value;
  refreshChart().catch(() => {});
});
let side = "buy";
document.querySelectorAll("#trade button").forEach((b) => b.addEventListener("click", () => (side = b.dataset.side)));
$("trade").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const t = await api("POST", "/api/portfolio/trades", {
      ticker: $("trade-ticker").value.trim().toUpperCase(),
      side,
      quantity: Number($("trade-quantity").value),
    });
    $("trade-result").textContent = `${t.side} ${t.quantity} ${t.ticker} at ${money(t.price)}`;
    await refreshPortfolio();
  } catch (err) {
    $("trade-result").textContent = err.message;
  }
});

window.addEventListener("error", (e) => fail(e.message));
const fromUrl = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromUrl) {
  // Out of the address bar and the history: the token is this tab's alone from here.
  const rest = new URLSearchParams(location.hash.slice(1));
  rest.delete("token");
  history.replaceState(null, "", location.pathname + (rest.toString() ? "#" + rest : ""));
}
const saved = fromUrl || sessionStorage.getItem("invest-token");
if (saved) start(saved).catch((e) => fail(e.message));
else $("sign-in").hidden = false;
