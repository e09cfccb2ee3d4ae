// The broadcasts: the list, and per broadcast its funnel (sent → delivered → clicked → converted), the
// opt-outs and the bots filtered out by kind, the clicks-over-time chart, its links searchable by
// recipient, and a link's clicks with verdict and signals.

import { $, api, cell, el, fill, money, num, pct, when } from "./core.js";
import { drawTimeline } from "./chart.js";

const PAGE = 50;
const enc = encodeURIComponent;

// What each bot kind (the part of a reason before its first ':') is, in words.
const BOT_KINDS = {
  preview: "Link previews",
  scanner: "Security scanners",
  crawler: "Crawlers",
  monitor: "Uptime monitors",
  headless: "Headless browsers",
  library: "HTTP libraries",
  http_library: "HTTP libraries",
  network: "Hosting and relay networks",
  sweep: "Sweeps (many links at once)",
  timing: "Too soon after sending",
  empty_user_agent: "No user agent",
  garbage_user_agent: "Malformed user agent",
  unrecognized_user_agent: "Unrecognised user agent",
  known_bot_pattern: "Known bot patterns",
  head: "HEAD requests",
  head_request: "HEAD requests",
  prefetch: "Prefetches",
  operator: "Operator rules",
};

const state = { id: null, code: null, offset: 0, recipient: "", points: [], bucket: "hour" };

const broadcastHash = (id, code) => "#broadcast=" + enc(id) + (code ? "&code=" + enc(code) : "");

export async function loadList() {
  const res = await api("/api/v1/broadcasts");
  const rows = res.broadcasts.map((b) =>
    el(
      "tr",
      { "data-broadcast": b.broadcast_id },
      el("th", { scope: "row" }, el("a", { href: broadcastHash(b.broadcast_id) }, b.broadcast_id)),
      cell(num(b.links), "num", "links"),
      cell(num(b.unique_clicks), "num", "unique_clicks"),
      cell(pct(b.click_through_rate, 1), "num", "click_through_rate"),
      cell(num(b.conversions), "num", "conversions"),
      cell(money(b.conversion_value), "num", "conversion_value"),
      cell(num(b.opt_outs), "num", "opt_outs"),
      cell(num(b.human_hits), "num", "human_hits"),
      cell(num(b.bot_hits), "num", "bot_hits"),
      cell(num(b.hits), "num", "hits"),
    ),
  );
  fill($("broadcast-rows"), rows);
  $("broadcasts-empty").hidden = rows.length > 0;
}

// `reasons` (`{"preview:whatsapp": 2, "sweep": 1}`) grouped by kind, largest first, with the details.
export function botKinds(reasons) {
  const kinds = new Map();
  for (const [reason, n] of Object.entries(reasons || {})) {
    const at = reason.indexOf(":");
    const kind = at < 0 ? reason : reason.slice(0, at);
    const entry = kinds.get(kind) || { kind, count: 0, details: [] };
    entry.count += n;
    if (at >= 0) entry.details.push([reason.slice(at + 1), n]);
    kinds.set(kind, entry);
  }
  for (const k of kinds.values()) k.details.sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  return [...kinds.values()].sort((a, b) => b.count - a.count || a.kind.localeCompare(b.kind));
}

function step(metric, label, value, ...sub) {
  return el(
    "li",
    { class: "step", "data-step": metric },
    el("span", { class: "label" }, label),
    el("strong", { class: "value", "data-metric": metric }, num(value)),
    el("span", { class: "sub" }, ...sub),
  );
}

function renderStats(s) {
  const value = money(s.conversion_value);
  fill(
    $("funnel"),
    step("links", "Links sent", s.links, "redirect links"),
    s.delivered > 0 && step("delivered", "Delivered", s.delivered, `${pct(s.delivered, s.links)} of sent`),
    step("unique_clicks", "Humans clicked", s.unique_clicks,
      el("span", { "data-metric": "click_through" }, pct(s.unique_clicks, s.links)), " click-through"),
    step("conversions", "Converted", s.conversions,
      value && el("span", { "data-metric": "conversion_value" }, value), value && " · ",
      `${pct(s.conversions, s.unique_clicks)} of clickers`),
  );
  fill(
    $("opt-outs"),
    el("span", { class: "label" }, "Opt-outs"),
    el("strong", { class: "value", "data-metric": "opt_outs" }, num(s.opt_outs)),
    el("span", { class: "sub" }, `${pct(s.opt_outs, s.links)} of sent`),
  );
  const kinds = botKinds(s.bot_reasons);
  fill(
    $("bots"),
    el("span", { class: "label" }, "Bots filtered"),
    el("strong", { class: "value", "data-metric": "bot_hits" }, num(s.bot_hits)),
    el("span", { class: "sub" }, "hits not counted as clicks"),
    kinds.length > 0 &&
      el("ul", { class: "kinds" }, kinds.map((k) =>
        el(
          "li",
          { "data-bot-kind": k.kind },
          el("span", { class: "kind" }, BOT_KINDS[k.kind] || k.kind),
          el("b", { "data-field": "count" }, num(k.count)),
          k.details.length > 0 &&
            el("span", { class: "details" }, k.details.map(([detail, n], i) =>
              el("span", { "data-detail": detail }, (i ? " · " : "") + `${detail} ${num(n)}`))),
        ))),
  );
}

async function loadTimeline() {
  const bucket = $("bucket").value;
  const res = await api(`/api/v1/broadcasts/${enc(state.id)}/timeline?bucket=${bucket}`);
  state.points = res.points;
  state.bucket = res.bucket || bucket;
  drawTimeline($("chart"), state.points, state.bucket);
}

export function redrawChart() {
  if (state.id && !$("view-broadcast").hidden) drawTimeline($("chart"), state.points, state.bucket);
}

async function loadLinks() {
  const query = new URLSearchParams({ limit: PAGE, offset: state.offset });
  if (state.recipient) query.set("recipient", state.recipient);
  const res = await api(`/api/v1/broadcasts/${enc(state.id)}/links?${query}`);
  const rows = res.links.map((l) =>
    el(
      "tr",
      { "data-code": l.code, class: l.code === state.code ? "selected" : null },
      el("th", { scope: "row" }, l.recipient || "—"),
      el("td", {}, el("a", { href: broadcastHash(state.id, l.code), "aria-label": `Clicks of ${l.code}` }, l.code)),
      cell(l.status, null, "status"),
      el("td", { title: when(l.delivered_at) || null, "data-field": "delivery_status" }, l.delivery_status || "—"),
      cell(num(l.human_hits), "num", "human_hits"),
      cell(num(l.bot_hits), "num", "bot_hits"),
      cell(num(l.conversions), "num", "conversions"),
      cell(when(l.last_click_at), null, "last_click_at"),
    ),
  );
  fill($("link-rows"), rows);
  const shown = res.links.length;
  $("links-summary").textContent = res.total === 0
    ? state.recipient ? `No recipient matches “${state.recipient}”.` : "No links."
    : `${num(res.offset + 1)}–${num(res.offset + shown)} of ${num(res.total)}` +
      (state.recipient ? ` matching “${state.recipient}”` : "");
  $("links-summary").dataset.total = res.total;
  $("links-prev").disabled = state.offset === 0;
  $("links-next").disabled = res.offset + shown >= res.total;
}

async function loadClicks() {
  const code = state.code;
  $("clicks-code").textContent = code;
  $("clicks").hidden = false;
  const res = await api(`/api/v1/links/${enc(code)}/clicks?limit=50`);
  const rows = res.clicks.map((c) =>
    el(
      "tr",
      { "data-click": c.click_id || null },
      cell(when(c.at)),
      cell(c.class, "verdict-" + c.class, "class"),
      cell(c.reason, null, "reason"),
      el("td", { "data-field": "signals" }, (c.signals || []).map((s) => el("span", { class: "chip" }, s))),
      cell(c.method, null, "method"),
      cell(c.user_agent || "", "ua", "user_agent"),
      cell(c.ip || "", null, "ip"),
      cell(c.click_id || "", "id", "click_id"),
    ),
  );
  fill($("click-rows"), rows);
  $("clicks-summary").textContent = rows.length ? `${rows.length} most recent, newest first.` : "No clicks yet.";
  $("clicks-summary").dataset.count = rows.length;
}

// Shows broadcast `id` (and the clicks of its link `code`, if given), or refreshes what is shown.
export async function showBroadcast(id, code) {
  if (state.id !== id) {
    Object.assign(state, { id, offset: 0, recipient: "", points: [] });
    $("recipient").value = "";
    fill($("funnel"));
    fill($("chart"));
  }
  state.code = code || null;
  $("b-name").textContent = id;
  $("clicks").hidden = !state.code;
  const stats = await api(`/api/v1/broadcasts/${enc(id)}/stats`);
  renderStats(stats);
  await Promise.all([loadTimeline(), loadLinks(), state.code ? loadClicks() : null]);
}

// Clicks of a link outside any broadcast view (a `#code=` link for a key without links.read).
export async function showLinkOnly(code) {
  state.id = null;
  state.code = code;
  await loadClicks();
}

let searchTimer = 0;
function search() {
  clearTimeout(searchTimer);
  state.recipient = $("recipient").value.trim();
  state.offset = 0;
  loadLinks().catch(reportTo("Search"));
}

let reportTo = () => () => {};

// Wires the broadcast view's controls; `report(what)` answers an error handler for `what`.
export function setUp(report) {
  reportTo = report;
  $("bucket").addEventListener("change", () => loadTimeline().catch(report("Timeline")));
  $("links-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    search();
  });
  $("recipient").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(search, 300);
  });
  $("links-prev").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE);
    loadLinks().catch(report("Links"));
  });
  $("links-next").addEventListener("click", () => {
    state.offset += PAGE;
    loadLinks().catch(report("Links"));
  });
  $("clicks-close").addEventListener("click", () => {
    location.hash = state.id ? broadcastHash(state.id) : "#broadcasts";
  });
}
