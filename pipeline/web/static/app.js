// tokenmeter dashboard: hash-routed views that poll the worker's /api/dashboard JSON.
"use strict";

const POLL_MS = 2000; // the issue allows at most 5 s; a new breach must show within 5 s
const C = { blue: "#0072B2", orange: "#E69F00", green: "#009E73", vermillion: "#D55E00",
  purple: "#CC79A7", sky: "#56B4E9", yellow: "#F0E442", ink: "#1d2330" };
const SERIES = [C.blue, C.orange, C.green, C.vermillion, C.purple, C.sky, C.yellow, C.ink];
const charts = new Map();
let timer = null;
let seenBreaches = null;

const esc = (v) => String(v ?? "").replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const num = (v) => (v === null || v === undefined ? NaN : Number(v));
const money = (v) => (isNaN(num(v)) ? "–" : "$" + num(v).toLocaleString("en-US",
  { minimumFractionDigits: 2, maximumFractionDigits: num(v) < 1 ? 4 : 2 }));
const int = (v) => Number(v || 0).toLocaleString("en-US");
const time = (ms) => new Date(ms).toISOString().slice(11, 16);
const dateTime = (ms) => new Date(ms).toISOString().slice(5, 16).replace("T", " ");
const when = (iso) => (iso ? String(iso).slice(0, 19).replace("T", " ") + " UTC" : "–");
const clock = (iso) => (iso ? String(iso).slice(5, 19).replace("T", " ") : "–");
const tenantLink = (t) => `<a href="#/tenant/${encodeURIComponent(t)}">${esc(t)}</a>`;
const badge = (s) => `<span class="badge ${esc(s)}">${esc(s)}</span>`;
const main = () => document.getElementById("main");

async function api(path) {
  const headers = {};
  const token = sessionStorage.getItem("tokenmeter_token");
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(path, { headers, cache: "no-store" });
  if (r.status === 401) {
    askToken();
    throw new Error("the API needs a token");
  }
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function askToken() {
  const dlg = document.getElementById("token-dialog");
  if (!dlg.open) dlg.showModal();
}

document.getElementById("token-form").addEventListener("submit", () => {
  sessionStorage.setItem("tokenmeter_token", document.getElementById("token-input").value);
  refresh();
});

document.getElementById("tenant-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = document.getElementById("tenant-input").value.trim();
  if (t) location.hash = "#/tenant/" + encodeURIComponent(t);
});

function chart(id, config) {
  // update in place so a poll does not flicker or steal focus
  const old = charts.get(id);
  const canvas = document.getElementById(id);
  if (old && old.canvas === canvas) {
    old.data.labels = config.data.labels;
    config.data.datasets.forEach((d, i) => {
      if (old.data.datasets[i]) Object.assign(old.data.datasets[i], { data: d.data });
      else old.data.datasets.push(d);
    });
    old.data.datasets.length = config.data.datasets.length;
    old.update("none");
    return old;
  }
  if (old) old.destroy();
  config.options = Object.assign({ responsive: true, maintainAspectRatio: false,
    animation: false, plugins: { legend: { labels: { boxWidth: 14 } } } }, config.options);
  const c = new Chart(canvas, config);
  charts.set(id, c);
  return c;
}

function card(title, body, cls = "") {
  return `<section class="card ${cls}"><h3>${esc(title)}</h3>${body}</section>`;
}

function canvas(id, label, tall = false) {
  return `<div class="chart${tall ? " tall" : ""}"><canvas id="${id}" role="img"
    aria-label="${esc(label)}" tabindex="0"></canvas></div>`;
}

const EMPTY_USAGE = `<p class="empty">No usage yet: publish events (<code>tokenmeter produce
  FILE</code>) or start traffic with <code>tokenmeter simulate</code>.</p>`;
const EMPTY_BUDGETS = `<p class="empty">No budgets yet:
  <code>tokenmeter budget set acme-monthly --tenant acme --limit 500 --period month</code></p>`;

// ---- overview ----
async function overview() {
  const d = await api("/api/dashboard/overview");
  const feed = await api("/api/dashboard/breaches?limit=10");
  const run = await api("/api/dashboard/runaway");
  const el = main();
  if (!el.querySelector("#ov")) {
    el.innerHTML = `<div id="ov"><h2>Overview</h2><div class="stats" id="ov-stats"></div>
      <div class="grid">
      ${card("Spend rate, last hour (per minute, by event time)", canvas("rate-chart",
        "Events and dollars per minute over the last hour", true))}
      ${card("Top tenants this month", `<div id="top-body"></div>`)}
      ${card("Runaway watch: runs and entities near their limits", `<div id="keys-body"></div>`,
        "wide")}
      ${card("Anomalies: spend rate far above its baseline", `<div id="anom-body"></div>`, "wide")}
      ${card("Breaches, live", `<div id="feed-body"></div>`, "wide")}
      ${card("Dead letters by reason", `<div id="dlq-body"></div>`)}
      </div></div>`;
  }
  const breaches24 = Object.values(d.breaches_24h).reduce((a, b) => a + b, 0);
  const lastMin = d.rate.length > 1 ? d.rate[d.rate.length - 2] : [0, 0, "0"]; // last full one
  el.querySelector("#ov-stats").innerHTML = [
    ["Spend today (UTC)", money(d.spend_today), `${int(d.events_today)} events`],
    ["Spend this month", money(d.spend_month), `${int(d.events_month)} events`],
    ["Last full minute", `${int(lastMin[1])} ev/min`, `${money(lastMin[2])} per minute`],
    ["Breaches, 24 h", int(breaches24), Object.entries(d.breaches_24h)
      .map(([k, n]) => `${esc(k)}: ${n}`).join(", ") || "none"],
    ["Budgets", int(d.budgets.total), `<a href="#/budgets">see status</a>`],
  ].map(([l, v, s]) => `<div class="card stat"><div class="label">${esc(l)}</div>
    <div class="value">${esc(v)}</div><div class="label">${s}</div></div>`).join("");
  chart("rate-chart", {
    type: "line",
    data: { labels: d.rate.map((r) => time(r[0])), datasets: [
      { label: "events / min", data: d.rate.map((r) => r[1]), borderColor: C.blue,
        backgroundColor: C.blue, yAxisID: "y", pointRadius: 0, borderWidth: 2 },
      { label: "$ / min", data: d.rate.map((r) => num(r[2])), borderColor: C.orange,
        backgroundColor: C.orange, yAxisID: "y1", pointRadius: 0, borderWidth: 2,
        borderDash: [6, 3] }] },
    options: { scales: { y: { beginAtZero: true, title: { display: true, text: "events" } },
      y1: { beginAtZero: true, position: "right", grid: { drawOnChartArea: false },
        title: { display: true, text: "USD" } } } },
  });
  const top = d.top_tenants;
  el.querySelector("#top-body").innerHTML = top.length ? `${canvas("top-chart",
    "Top tenants by spend this month")}<table><thead><tr><th>Tenant</th><th class="num">Spend
    </th><th class="num">Events</th></tr></thead><tbody>${top.map((r) => `<tr><td>
    ${tenantLink(r[0])}</td><td class="num">${money(r[1])}</td><td class="num">${int(r[2])}
    </td></tr>`).join("")}</tbody></table>` : EMPTY_USAGE;
  if (top.length) {
    chart("top-chart", { type: "bar", data: { labels: top.map((r) => r[0]), datasets: [
      { label: "USD this month", data: top.map((r) => num(r[1])), backgroundColor: C.blue }] },
      options: { indexAxis: "y", plugins: { legend: { display: false } } } });
  }
  el.querySelector("#feed-body").innerHTML = breachTable(feed.breaches, true);
  el.querySelector("#keys-body").innerHTML = keyTable(run.near_limits, true) +
    `<p class="label">${int(run.active_keys)} active runs and entities under template budgets</p>`;
  el.querySelector("#anom-body").innerHTML = run.anomalies.length ? `<table><thead><tr>
    <th>When (UTC)</th><th>Tenant</th><th>Budget</th><th>Key</th><th class="num">Rate /min</th>
    <th class="num">Baseline /min</th><th class="num">Score</th><th class="num">Window</th>
    <th>Action</th></tr></thead><tbody>${run.anomalies.map((b) => `<tr data-anomaly="${esc(
      b.breach_id)}"><td>${clock(b.emitted_at)}</td><td>${tenantLink(b.tenant_id)}</td>
    <td>${esc(b.budget_id)}</td><td>${esc(b.key || "")}</td>
    <td class="num">${money(b.observed_rate)}</td><td class="num">${money(b.baseline_rate)}</td>
    <td class="num">${b.score === null ? "–" : num(b.score).toFixed(1)}</td>
    <td class="num">${int(b.window_seconds)} s</td><td>${esc(b.action)}</td></tr>`).join("")}
    </tbody></table>` : `<p class="empty">No anomalies: enable them with
    <code>tokenmeter budget set ID ... --anomaly [--max-rate 2/min]</code>.</p>`;
  const dlq = Object.entries(d.dlq_by_reason);
  el.querySelector("#dlq-body").innerHTML = dlq.length ? `<table><thead><tr><th>Reason</th>
    <th class="num">Dead letters</th></tr></thead><tbody>${dlq.map(([k, n]) => `<tr><td>
    <code>${esc(k)}</code></td><td class="num">${int(n)}</td></tr>`).join("")}</tbody></table>`
    : `<p class="empty">No dead letters.</p>`;
}

function keyTable(rows, withTenant) {
  if (!rows.length) return `<p class="empty">No run or entity is near its limit.</p>`;
  return `<table class="keys"><thead><tr>${withTenant ? "<th>Tenant</th>" : ""}<th>Budget</th>
    <th>Key</th><th>Status</th><th class="num">Spent</th><th class="num">Limit</th>
    <th class="num">Used</th><th>Last event</th></tr></thead><tbody>${rows.map((k) => `<tr
    data-key="${esc(k.budget_id + "/" + k.key)}">${withTenant ? `<td>${tenantLink(k.tenant_id)}</td>`
      : ""}<td>${esc(k.budget_id)}</td><td>${esc(k.each)}=${esc(k.key)}</td>
    <td>${badge(k.status)}</td><td class="num">${fmtMetric(k, k.spent)}</td>
    <td class="num">${fmtMetric(k, k.limit)}</td><td class="num">${num(k.percent).toFixed(1)}%</td>
    <td>${clock(k.last_seen)}</td></tr>`).join("")}</tbody></table>`;
}

function breachTable(rows, withTenant) {
  if (!rows.length) return `<p class="empty">No breaches yet.</p>`;
  const fresh = seenBreaches ? rows.filter((b) => !seenBreaches.has(b.breach_id)) : [];
  seenBreaches = new Set([...(seenBreaches || []), ...rows.map((b) => b.breach_id)]);
  const isNew = new Set(fresh.map((b) => b.breach_id));
  return `<table class="breaches"><thead><tr><th>When (UTC)</th>${withTenant ? "<th>Tenant</th>" : ""}
    <th>Budget</th><th>Kind</th><th class="num">Threshold</th><th class="num">At</th>
    <th>Action</th></tr></thead><tbody>${rows.map((b) => `<tr data-breach="${esc(b.breach_id)}"
    class="${isNew.has(b.breach_id) ? "new" : ""}"><td>${clock(b.emitted_at)}</td>
    ${withTenant ? `<td>${tenantLink(b.tenant_id)}</td>` : ""}<td>${esc(b.budget_id)}</td>
    <td>${esc(b.kind)}</td><td class="num">${num(b.threshold_pct)}%</td>
    <td class="num">${b.kind === "forecast" ? `p=${num(b.probability).toFixed(2)}`
      : num(b.percent).toFixed(1) + "%"}</td><td>${esc(b.action)}</td></tr>`).join("")}
    </tbody></table>`;
}

// ---- budgets and breaches ----
async function budgets() {
  const d = await api("/api/dashboard/budgets");
  main().innerHTML = `<h2>Budgets</h2>` + card("Current period", d.budgets.length ?
    `<table><thead><tr><th>Budget</th><th>Tenant</th><th>Period</th><th>Status</th>
    <th class="num">Spent</th><th class="num">Limit</th><th class="num">Used</th>
    <th class="num">Forecast p50</th><th class="num">P(over)</th></tr></thead><tbody>
    ${d.budgets.map((b) => `<tr data-budget="${esc(b.budget_id)}"><td>${esc(b.budget_id)}</td>
    <td>${tenantLink(b.tenant_id)}</td><td>${esc(b.period)}${b.each ? `, each ${esc(b.each)}
      (top: ${esc(b.top_key || "none")})` : ""}</td><td>${badge(b.status)}</td>
    <td class="num">${fmtMetric(b, b.spent)}</td><td class="num">${fmtMetric(b, b.limit)}</td>
    <td class="num">${num(b.percent).toFixed(1)}%</td>
    <td class="num">${b.forecast ? fmtMetric(b, b.forecast.predicted_spend) : "–"}</td>
    <td class="num">${b.forecast && b.forecast.probability_exceed !== null
      ? num(b.forecast.probability_exceed).toFixed(2) : "–"}</td></tr>`).join("")}
    </tbody></table>` : EMPTY_BUDGETS);
}

function fmtMetric(b, v) {
  return b.metric === "cost" ? money(v) : int(Math.round(num(v)));
}

async function breaches() {
  const d = await api("/api/dashboard/breaches?limit=100");
  const el = main();
  if (!el.querySelector("#br")) el.innerHTML = `<div id="br"><h2>Breaches</h2>
    ${card("Newest first, updates live", `<div id="br-body"></div>`)}</div>`;
  el.querySelector("#br-body").innerHTML = breachTable(d.breaches, true);
}

// ---- tenant ----
async function tenant(id) {
  const d = await api("/api/dashboard/tenants/" + encodeURIComponent(id));
  const el = main();
  const key = "tenant:" + id + ":" + d.budgets.map((b) => b.budget_id).join(",");
  if (el.dataset.key !== key) {
    el.dataset.key = key;
    el.innerHTML = `<h2>Tenant ${esc(id)}</h2><div class="grid">
      ${card("Spend by hour, last 48 h", `<div id="t-hour"></div>`)}
      ${card("Spend by day, last 30 days", `<div id="t-day"></div>`)}
      ${card("By model, last 30 days", `<div id="t-model"></div>`)}
      ${card("By feature, last 30 days", `<div id="t-feature"></div>`)}
      </div><h2>Budgets</h2><div class="grid" id="t-budgets">${d.budgets.length
        ? d.budgets.map((b) => card(`${b.budget_id} (${b.period})`, `<p id="bs-${esc(b.budget_id)}"></p>
          ${canvas("burn-" + b.budget_id, `Burn-down of budget ${b.budget_id}`, true)}`)).join("")
        : `<section class="card">${EMPTY_BUDGETS.replace("acme", esc(id)).replace("--tenant acme",
          "--tenant " + esc(id))}</section>`}</div>
      <h2>Recent breaches</h2>${card("Newest first", `<div id="t-breaches"></div>`)}`;
  }
  bars("t-hour", d.hourly.map((r) => dateTime(Date.parse(r[0] + (r[0].endsWith("Z") ? "" : "Z")))),
    d.hourly.map((r) => num(r[1])), C.blue, "USD per hour");
  bars("t-day", d.daily.map((r) => String(r[0])), d.daily.map((r) => num(r[1])), C.green,
    "USD per day");
  bars("t-model", d.by_model.map((r) => r[0]), d.by_model.map((r) => num(r[1])), C.orange,
    "USD by model", true);
  bars("t-feature", d.by_feature.map((r) => r[0] || "(none)"), d.by_feature.map((r) => num(r[1])),
    C.purple, "USD by feature", true);
  d.budgets.forEach(burnDown);
  el.querySelector("#t-breaches").innerHTML = breachTable(d.breaches, false);
}

function bars(id, labels, values, colour, label, horizontal = false) {
  const host = document.getElementById(id);
  if (!labels.length) {
    if (charts.has(id + "-c")) charts.get(id + "-c").destroy();
    charts.delete(id + "-c");
    host.innerHTML = EMPTY_USAGE;
    return;
  }
  if (!host.querySelector("canvas")) host.innerHTML = canvas(id + "-c", label);
  chart(id + "-c", { type: "bar", data: { labels, datasets: [{ label, data: values,
    backgroundColor: colour }] }, options: { indexAxis: horizontal ? "y" : "x",
    scales: horizontal ? { y: { ticks: { autoSkip: false } } } : {},
    plugins: { legend: { display: false } } } });
}

function burnDown(b) {
  if (b.keys) {  // a template or run budget: every key has its own limit, listed instead
    document.getElementById("bs-" + b.budget_id).innerHTML = `${badge(b.status)} each
      ${esc(b.each)}: ${fmtMetric(b, b.limit)} per ${b.period === "run" ? "run" : esc(b.period)}
      ${keyTable(b.keys, false)}`;
    const c = document.getElementById("burn-" + b.budget_id);
    if (c) c.style.display = "none";
    return;
  }
  const f = b.forecast;
  document.getElementById("bs-" + b.budget_id).innerHTML = `${badge(b.status)}
    ${fmtMetric(b, b.spent)} of ${fmtMetric(b, b.limit)} (${num(b.percent).toFixed(1)}%),
    period ${when(b.period_start)} to ${when(b.period_end)}${f ? `; forecast (${esc(f.model)})
    ${f.predicted_spend !== null ? `p50 ${fmtMetric(b, f.predicted_spend)}, p10–p90
    ${fmtMetric(b, f.lower)}–${fmtMetric(b, f.upper)}, P(over limit) ${num(f.probability_exceed)
      .toFixed(2)}, made ${when(f.run_at)}` : `none: ${esc(f.reason)}`}` : "; no forecast yet"}`;
  const xy = (pts, i = 1) => pts.map((p) => ({ x: p[0], y: num(p[i]) }));
  const edge = [{ x: b.start_ms }, { x: b.end_ms }];
  const datasets = [{ label: "actual", data: xy(b.actual), borderColor: C.blue,
    backgroundColor: C.blue, borderWidth: 3, pointRadius: 0 }];
  const pts = f && f.points && f.points.length ? f.points : [];
  if (pts.length) {
    // paths start where the ledger stood when the forecast ran (at most an hour ago)
    const joint = [f.run_at_ms, f.spent_at_run, f.spent_at_run, f.spent_at_run];
    datasets.push(
      { label: "forecast p10–p90", data: xy([joint, ...pts], 2), borderColor: "transparent",
        backgroundColor: "rgba(86,180,233,0.25)", pointRadius: 0, fill: "+1" },
      { label: "forecast p90", data: xy([joint, ...pts], 3), borderColor: "transparent",
        pointRadius: 0, fill: false },
      { label: "forecast p50", data: xy([joint, ...pts], 1), borderColor: C.sky,
        borderDash: [6, 4], borderWidth: 2, pointRadius: 0 });
  }
  b.thresholds.forEach((t, i) => datasets.push({ label: `${num(t.percent)}%`,
    data: edge.map((e) => ({ x: e.x, y: num(t.level) })), pointRadius: 0, borderWidth: 1.5,
    borderColor: num(t.percent) >= 100 ? C.vermillion : [C.orange, C.purple, C.ink][i % 3],
    borderDash: num(t.percent) >= 100 ? [] : [2, 3] }));
  chart("burn-" + b.budget_id, { type: "line", data: { datasets },
    options: { parsing: true, scales: { x: { type: "linear", min: b.start_ms, max: b.end_ms,
      ticks: { callback: (v) => dateTime(v), maxTicksLimit: 8 } },
      y: { beginAtZero: true, title: { display: true, text: b.metric === "cost" ? "USD" : b.metric } } },
    plugins: { legend: { labels: { filter: (item) => item.text !== "forecast p90" } } } } });
}

// ---- routing and polling ----
function route() {
  const h = location.hash || "#/";
  const m = h.match(/^#\/tenant\/(.+)$/);
  const view = m ? "tenant" : h === "#/budgets" ? "budgets" : h === "#/breaches" ? "breaches"
    : "overview";
  document.querySelectorAll("nav a").forEach((a) => {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  return m ? () => tenant(decodeURIComponent(m[1])) : { budgets, breaches, overview }[view];
}

async function refresh() {
  clearTimeout(timer);
  const live = document.getElementById("live");
  try {
    if (!document.hidden) {
      await route()();
      live.textContent = "live · updated " + new Date().toLocaleTimeString();
      live.classList.remove("error");
    }
  } catch (err) {
    live.textContent = "not updating: " + err.message;
    live.classList.add("error");
  }
  timer = setTimeout(refresh, POLL_MS);
}

window.addEventListener("hashchange", () => {
  charts.forEach((c) => c.destroy());
  charts.clear();
  delete main().dataset.key;
  main().innerHTML = "";
  refresh().then(() => main().focus({ preventScroll: true }));
});
if (typeof Chart === "undefined") {
  main().innerHTML = `<p class="error">Chart.js is missing: run <code>make assets</code>.</p>`;
} else {
  Chart.defaults.color = "#1d2330";
  Chart.defaults.font.size = 12;
  refresh();
}
