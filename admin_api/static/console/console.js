// The operator's console: reads and acts only through the admin API (/admin/v1), with the admin token
// entered once and kept in sessionStorage (gone when the tab closes). Everything shown is set as text.
"use strict";

const API = "/admin/v1";
const TOKEN_KEY = "dynaseal.adminToken";
const $ = (selector) => document.querySelector(selector);
const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const headers = {Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}`};
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const reply = await fetch(API + path, {method: options.method || "GET", headers,
                                          body: options.body === undefined ? undefined : JSON.stringify(options.body)});
  const text = await reply.text();
  let payload = null;
  try { payload = text ? JSON.parse(text) : null; } catch (_) { payload = null; }
  if (reply.status === 401) { logout("The admin token was refused: log in again."); }
  if (!reply.ok) {
    const detail = payload && payload.detail;
    const message = typeof detail === "string" ? detail : (detail ? JSON.stringify(detail) : reply.statusText);
    throw new ApiError(reply.status, `${reply.status}: ${message}`);
  }
  return payload;
}

function setStatus(testid, state, message) {
  const el = byTestId(testid);
  el.dataset.state = state;
  el.textContent = message;
  el.classList.toggle("error", state === "error");
}

function cell(row, value) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "" : String(value);
  row.append(td);
  return td;
}

function money(cost) { return cost ? `${cost.amount} ${cost.currency}` : "unpriced"; }

// --- login --------------------------------------------------------------------------------------

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("#nav").hidden = true;
  document.querySelectorAll(".page").forEach((p) => { p.hidden = true; });
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
}

async function login(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await api("/usage?bucket=day");
  } catch (error) {
    if (error.status !== 401) logout(`The admin API did not answer: ${error.message}`);
    return;
  }
  $("#login").hidden = true;
  $("#nav").hidden = false;
  show(location.hash.slice(1) || "usage");
}

// --- pages --------------------------------------------------------------------------------------

const PAGES = {tenants: loadTenants, usage: loadUsage, refusals: loadRefusals, dlq: loadDlq, revoke: () => {}};

function show(name) {
  if (!(name in PAGES)) name = "usage";
  document.querySelectorAll(".page").forEach((p) => { p.hidden = p.id !== `page-${name}`; });
  document.querySelectorAll("#nav [data-page]").forEach((b) => b.classList.toggle("active", b.dataset.page === name));
  history.replaceState(null, "", `#${name}`);
  PAGES[name]();
}

async function loadTenants() {
  setStatus("tenants-status", "loading", "Loading…");
  const list = $("#tenants-list");
  list.replaceChildren();
  let payload;
  try {
    payload = await api("/tenants");
  } catch (error) {
    const message = error.status === 404 ? "This admin API serves no tenant routes." : error.message;
    setStatus("tenants-status", error.status === 404 ? "absent" : "error", message);
    return;
  }
  // `{tenants: [{id, source, disabled, generation, tenant: {...settings}}]}`; a bare list is read the same way.
  const tenants = Array.isArray(payload) ? payload : (payload && (payload.tenants || payload.items)) || [];
  for (const tenant of tenants) {
    const details = document.createElement("details");
    details.dataset.tenant = String(tenant.id);
    const summary = document.createElement("summary");
    const settings = tenant.tenant && typeof tenant.tenant === "object" ? tenant.tenant : tenant;
    const label = [tenant.id, settings.name, tenant.source ? `from ${tenant.source}` : "",
                   tenant.enabled === false || tenant.disabled ? "disabled" : ""];
    summary.textContent = label.filter(Boolean).join(" · ");
    const pre = document.createElement("pre");
    pre.textContent = JSON.stringify(tenant, null, 2);
    details.append(summary, pre);
    list.append(details);
  }
  setStatus("tenants-status", "ready", `${tenants.length} tenant(s)`);
}

const BUCKET_MS = {minute: 60000, hour: 3600000, day: 86400000};

// Every bucket of the range, empty ones too, so the chart reads as time; only the filled ones past 500.
function timeline(payload) {
  const filled = [...new Set(payload.series.map((row) => row.bucket))].sort();
  const size = BUCKET_MS[payload.bucket];
  const start = Math.floor(Date.parse(payload.since) / size) * size;
  const end = Date.parse(payload.until);
  if ((end - start) / size > 500) return filled;
  const all = [];
  for (let at = start; at < end; at += size) all.push(new Date(at).toISOString().replace(".000Z", "Z"));
  return [...new Set([...all, ...filled])].sort();
}

function bucketLabel(iso, bucket) {
  if (bucket === "day") return iso.slice(0, 10);
  return iso.slice(bucket === "hour" ? 5 : 11, 16).replace("T", " ");
}

async function loadUsage(event) {
  if (event) event.preventDefault();
  setStatus("usage-status", "loading", "Loading…");
  const form = new FormData($("#usage-form"));
  const query = new URLSearchParams();
  for (const [name, value] of form.entries()) if (String(value).trim()) query.set(name, String(value).trim());
  let payload;
  try {
    payload = await api(`/usage?${query}`);
  } catch (error) {
    setStatus("usage-status", "error", error.message);
    return;
  }
  const groups = payload.group_by;
  const buckets = timeline(payload);
  const labels = buckets.map((b) => bucketLabel(b, payload.bucket));
  const names = [...new Set(payload.series.map((row) => groups.map((g) => row[g]).join(" / ")))].sort();
  const tokens = names.map((name) => ({name, values: buckets.map(() => 0)}));
  const costs = names.map((name) => ({name, values: buckets.map(() => 0)}));
  const currencies = new Set();
  for (const row of payload.series) {
    const s = names.indexOf(groups.map((g) => row[g]).join(" / "));
    const i = buckets.indexOf(row.bucket);
    tokens[s].values[i] += row.total_tokens;
    if (row.cost) { costs[s].values[i] += Number(row.cost.amount); currencies.add(row.cost.currency); }
  }
  const currency = [...currencies].join("/");
  DynasealCharts.stackedColumns($("#usage-tokens"), {labels, series: tokens}, (v) => Math.round(v).toLocaleString());
  DynasealCharts.stackedColumns($("#usage-cost"), {labels, series: costs.filter((c) => c.values.some((v) => v > 0))},
                                (v) => (v === 0 ? "0" : v.toPrecision(2)));
  byTestId("cost-currency").textContent = currency ? `(${currency})` : "";
  const body = byTestId("usage-totals").querySelector("tbody");
  body.replaceChildren();
  for (const total of payload.totals) {
    const row = document.createElement("tr");
    cell(row, total.tenant); cell(row, total.requests); cell(row, total.total_tokens); cell(row, money(total.cost));
    body.append(row);
  }
  const requests = payload.series.reduce((sum, row) => sum + row.requests, 0);
  setStatus("usage-status", "ready",
            `${requests} request(s) from ${payload.since} to ${payload.until}, per ${payload.bucket}`);
}

async function loadRefusals() {
  setStatus("refusals-status", "loading", "Loading…");
  let payload;
  try {
    payload = await api("/refusals");
  } catch (error) {
    setStatus("refusals-status", "error", error.message);
    return;
  }
  DynasealCharts.horizontalBars($("#refusals-chart"), payload.authz.codes.map((c) => ({label: c.code, value: c.count})));
  const body = byTestId("content-refusals").querySelector("tbody");
  body.replaceChildren();
  for (const item of payload.content_rules) {
    const row = document.createElement("tr");
    cell(row, item.tenant); cell(row, item.code); cell(row, item.count);
    body.append(row);
  }
  const missing = payload.authz.unreachable.length ? ` (not reachable: ${payload.authz.unreachable.join(", ")})` : "";
  const total = payload.authz.codes.reduce((sum, c) => sum + c.count, 0);
  setStatus("refusals-status", "ready", `${total} refusal(s) counted by authz${missing}`);
}

let dlqReason = null;

async function loadDlq() {
  setStatus("dlq-status", "loading", "Reading the DLQ…");
  let payload;
  try {
    payload = await api("/dlq");
  } catch (error) {
    setStatus("dlq-status", "error", error.message);
    return;
  }
  const reasons = $("#dlq-reasons");
  reasons.replaceChildren();
  for (const [reason, count] of [["all", payload.entries.length], ...Object.entries(payload.by_reason)]) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `${reason} (${count})`;
    button.dataset.reason = reason;
    button.classList.toggle("active", (dlqReason || "all") === reason);
    button.addEventListener("click", () => { dlqReason = reason === "all" ? null : reason; loadDlq(); });
    reasons.append(button);
  }
  const body = byTestId("dlq-entries").querySelector("tbody");
  body.replaceChildren();
  const shown = payload.entries.filter((e) => dlqReason === null || e.reason === dlqReason);
  for (const entry of shown) {
    const row = document.createElement("tr");
    row.dataset.entry = entry.id;
    for (const value of [entry.id, entry.reason, entry.tenant, entry.key_id, entry.request_id, entry.model,
                         entry.total_tokens]) cell(row, value);
    const action = cell(row, "");
    if (entry.replayed_at_ms) {
      action.textContent = "replayed";
      action.dataset.testid = `replayed-${entry.id}`;
    } else if (entry.replayable) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Replay";
      button.dataset.testid = `replay-${entry.id}`;
      button.addEventListener("click", () => replay(entry.id, button));
      action.append(button);
    } else {
      action.textContent = "not replayable here";
    }
    body.append(row);
  }
  setStatus("dlq-status", "ready", `${payload.entries.length} entr${payload.entries.length === 1 ? "y" : "ies"} on the DLQ`);
}

async function replay(id, button) {
  button.disabled = true;
  try {
    const result = await api(`/dlq/${encodeURIComponent(id)}/replay`, {method: "POST"});
    setStatus("dlq-status", "replayed", `Entry ${id} (request ${result.replayed.request_id}) sent again.`);
    button.replaceWith(Object.assign(document.createElement("span"), {textContent: "replayed"}));
  } catch (error) {
    button.disabled = false;
    setStatus("dlq-status", "error", error.message);
  }
}

async function revoke(event) {
  event.preventDefault();
  const form = new FormData($("#revoke-form"));
  const ancestors = String(form.get("ancestors") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const body = {tenant: String(form.get("tenant")).trim(), key_id: String(form.get("key_id")).trim(), ancestors};
  setStatus("revoke-status", "loading", "Revoking…");
  try {
    const result = await api("/revocations", {method: "POST", body});
    setStatus("revoke-status", "revoked", `Key ${result.key_id} of ${result.tenant} is revoked.`);
  } catch (error) {
    setStatus("revoke-status", "error", error.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    login($("#token").value);
    $("#token").value = "";
  });
  $("#logout").addEventListener("click", () => logout(""));
  document.querySelectorAll("#nav [data-page]").forEach((b) => b.addEventListener("click", () => show(b.dataset.page)));
  $("#usage-form").addEventListener("submit", loadUsage);
  $("#revoke-form").addEventListener("submit", revoke);
  if (sessionStorage.getItem(TOKEN_KEY)) login(sessionStorage.getItem(TOKEN_KEY)); else logout("");
});
