// The Webhooks page: the configuration (a PUT sends only what was changed), a test event, the delivery
// log with failures highlighted, and the dead letters with a replay. A key without webhooks.read sees a
// short note instead; one without webhooks.write sees why a change was refused.

import { $, api, cell, el, fill, forbidden, num, when } from "./core.js";

// The settings the form edits: API field, how the input holds it.
const FIELDS = [
  ["click_url", "url"],
  ["opt_out_url", "url"],
  ["conversion_url", "url"],
  ["format", "text"],
  ["hits", "text"],
  ["recipient_format", "text"],
  ["click_fields", "list"],
  ["conversion_fields", "list"],
  ["unique_clicks_only", "bool"],
  ["enabled", "bool"],
];

let shown = null; // the form's values as last loaded, to send only what changed
let dirty = false; // edited since: an auto-refresh must not overwrite what the user is typing

const input = (field) => $("wh-" + field);

function read(field, kind) {
  const node = input(field);
  if (kind === "bool") return node.checked;
  if (kind === "list") return node.value.split(/[\s,]+/).filter(Boolean);
  const text = node.value.trim();
  return kind === "url" && text === "" ? null : text;
}

function fillForm(settings) {
  for (const [field, kind] of FIELDS) {
    const node = input(field);
    const value = settings[field];
    if (kind === "bool") node.checked = Boolean(value);
    else if (kind === "list") node.value = (value || []).join(", ");
    else node.value = value ?? "";
  }
  const hasSecret = Boolean(settings.signing_secret);
  input("signing_secret").value = "";
  input("signing_secret").placeholder = hasSecret ? "set (hidden): type to replace" : "not set";
  input("clear_signing_secret").checked = false;
  $("wh-clear-secret").hidden = !hasSecret;
  shown = Object.fromEntries(FIELDS.map(([field, kind]) => [field, read(field, kind)]));
  dirty = false;
}

function result(node, text, ok) {
  node.textContent = text;
  node.className = "result " + (ok ? "ok" : "error");
  node.dataset.success = String(ok);
}

async function save(ev) {
  ev.preventDefault();
  const changes = {};
  for (const [field, kind] of FIELDS) {
    const value = read(field, kind);
    if (JSON.stringify(value) !== JSON.stringify(shown[field])) changes[field] = value;
  }
  const secret = input("signing_secret").value;
  if (secret) changes.signing_secret = secret;
  if (input("clear_signing_secret").checked) changes.clear_signing_secret = true;
  if (Object.keys(changes).length === 0) return result($("wh-save-result"), "Nothing changed.", true);
  try {
    fillForm(await api("/api/v1/webhooks", { method: "PUT", body: changes }));
    result($("wh-save-result"), `Saved: ${Object.keys(changes).join(", ")}.`, true);
  } catch (e) {
    const why = forbidden(e) ? "This key may not change webhooks (it lacks webhooks.write)." : e.message;
    result($("wh-save-result"), "Not saved: " + why, false);
  }
}

async function sendTest() {
  const type = $("wh-test-type").value;
  const out = $("wh-test-result");
  $("wh-test-send").disabled = true;
  try {
    const r = await api("/api/v1/webhooks/test", { method: "POST", body: { type } });
    const code = r.response_code ? `HTTP ${r.response_code}` : "no response";
    fill(
      out,
      el("span", {}, `${r.success ? "✓ Delivered" : "✗ Failed"}: ${code} in ${num(r.response_time_ms)} ms`),
      r.error && el("span", { class: "wrap" }, ` — ${r.error}`),
      el("details", {}, el("summary", {}, "Payload sent"), el("pre", {}, JSON.stringify(r.payload, null, 2))),
    );
    out.className = "result " + (r.success ? "ok" : "error");
    out.dataset.success = String(r.success);
  } catch (e) {
    result(out, forbidden(e) ? "This key may not send test events (it lacks webhooks.write)." : e.message, false);
  } finally {
    $("wh-test-send").disabled = false;
  }
  await loadLogs();
}

async function loadLogs() {
  const res = await api("/api/v1/webhooks/logs?limit=50");
  const rows = res.logs.map((l) => {
    const failed = !(l.response_code >= 200 && l.response_code < 300);
    return el(
      "tr",
      { class: failed ? "failed" : null, "data-event": l.event_id },
      cell(when(l.at)),
      cell(l.type, null, "type"),
      cell(num(l.attempt), "num", "attempt"),
      cell((failed ? "✗ " : "✓ ") + String(l.outcome).replaceAll("_", " "), null, "outcome"),
      cell(l.response_code ?? "—", "num", "response_code"),
      cell(`${num(l.response_time_ms)} ms`, "num"),
      cell(l.url, "wrap", "url"),
      cell(l.error || "", "wrap", "error"),
    );
  });
  fill($("wh-log-rows"), rows);
  $("wh-log-empty").hidden = rows.length > 0;
}

async function loadDeadLetters() {
  const res = await api("/api/v1/webhooks/dead-letters?limit=100");
  const rows = res.dead_letters.map((d) =>
    el(
      "tr",
      { "data-event": d.event_id },
      cell(when(d.at)),
      cell(d.type, null, "type"),
      cell(String(d.reason).replaceAll("_", " "), null, "reason"),
      cell(num(d.attempts), "num", "attempts"),
      cell(d.url, "wrap", "url"),
      cell(d.event_id, "id", "event_id"),
    ),
  );
  fill($("wh-dead-rows"), rows);
  const summary = $("wh-dead-summary");
  summary.textContent = rows.length
    ? `${num(rows.length)} events will not be delivered unless replayed.`
    : "No dead letters: every event was delivered or is still being tried.";
  summary.dataset.count = rows.length;
  $("wh-backlog").textContent = `${num(res.backlog)} events waiting for delivery.`;
  $("wh-replay").disabled = rows.length === 0;
}

async function replay() {
  $("wh-replay").disabled = true;
  try {
    const r = await api("/api/v1/webhooks/dead-letters/replay", { method: "POST", body: {} });
    result($("wh-replay-result"), `Queued ${num(r.replayed)} dead letters again.`, true);
  } catch (e) {
    const why = forbidden(e) ? "This key may not replay (it lacks webhooks.write)." : e.message;
    result($("wh-replay-result"), why, false);
  }
  await Promise.all([loadDeadLetters(), loadLogs()]);
}

// Loads (or refreshes) the page; the settings form only while it holds no unsaved edit.
export async function showWebhooks() {
  let settings;
  try {
    settings = await api("/api/v1/webhooks");
  } catch (e) {
    if (!forbidden(e)) throw e;
    $("wh-forbidden").hidden = false;
    $("wh-body").hidden = true;
    return;
  }
  $("wh-forbidden").hidden = true;
  $("wh-body").hidden = false;
  if (!dirty) fillForm(settings);
  await Promise.all([loadLogs(), loadDeadLetters()]);
}

export function setUp(report) {
  $("wh-form").addEventListener("submit", save);
  $("wh-form").addEventListener("input", () => (dirty = true));
  $("wh-test-send").addEventListener("click", () => sendTest().catch(report("Test event")));
  $("wh-replay").addEventListener("click", () => replay().catch(report("Replay")));
}
