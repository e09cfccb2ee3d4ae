// linkhit campaign view. No dependencies; talks to the JSON API with the key the user typed, which
// stays in sessionStorage (this tab only). A "#key=…&code=…" fragment (for links from other tools) is
// accepted once and removed from the URL.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const KEY = "linkhit.apiKey";
  let selected = null;

  const hash = new URLSearchParams(location.hash.slice(1));
  const fromHash = hash.get("key");
  const codeFromHash = hash.get("code");
  if (fromHash) {
    sessionStorage.setItem(KEY, fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }

  function status(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
  }

  async function api(path) {
    const res = await fetch(path, { headers: { Authorization: "Bearer " + sessionStorage.getItem(KEY) } });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw Object.assign(new Error(body.message || res.statusText), { status: res.status, code: body.code });
    return body;
  }

  function cell(row, text, cls, field) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    if (field) td.dataset.field = field;
    row.appendChild(td);
    return td;
  }

  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
  const pct = (x) => (x * 100).toFixed(1) + "%";

  function renderBroadcasts(list) {
    const body = $("broadcast-rows");
    body.textContent = "";
    for (const b of list) {
      const tr = document.createElement("tr");
      tr.dataset.broadcast = b.broadcast_id;
      const th = document.createElement("th");
      th.scope = "row";
      const btn = document.createElement("button");
      btn.type = "button";
      btn.className = "plain";
      btn.textContent = b.broadcast_id;
      btn.setAttribute("aria-label", "Show clicks over time of " + b.broadcast_id);
      btn.addEventListener("click", () => selectBroadcast(b.broadcast_id));
      th.appendChild(btn);
      tr.appendChild(th);
      cell(tr, b.links, "num", "links");
      cell(tr, b.hits, "num", "hits");
      cell(tr, b.human_hits, "num", "human_hits");
      cell(tr, b.bot_hits, "num", "bot_hits");
      cell(tr, b.unique_clicks, "num", "unique_clicks");
      cell(tr, pct(b.click_through_rate), "num", "click_through_rate");
      body.appendChild(tr);
    }
    $("broadcasts").hidden = false;
    if (list.length === 0) status("No broadcasts yet.");
  }

  // Grouped bars (human, bot) per bucket: readable with one bucket or a hundred.
  function chart(points) {
    const W = 720, H = 240, P = 36;
    const max = Math.max(1, ...points.map((p) => Math.max(p.human, p.bot)));
    const slot = (W - 2 * P) / Math.max(1, points.length);
    const bar = Math.max(1, Math.min(24, slot * 0.4));
    const h = (v) => (v * (H - 2 * P)) / max;
    const human = points.reduce((s, p) => s + p.human, 0), bot = points.reduce((s, p) => s + p.bot, 0);
    const label = `Clicks over time: ${human} human and ${bot} bot hits in ${points.length} buckets, peak ${max}.`;
    const bars = points.map((p, i) => {
      const x = P + i * slot + slot / 2;
      const title = `${new Date(p.at).toLocaleString()}: ${p.human} human, ${p.bot} bot`;
      return `<g><title>${title}</title>` +
        `<rect x="${(x - bar).toFixed(1)}" y="${(H - P - h(p.human)).toFixed(1)}" width="${bar.toFixed(1)}" height="${h(p.human).toFixed(1)}" fill="#0b5cad"/>` +
        `<rect x="${x.toFixed(1)}" y="${(H - P - h(p.bot)).toFixed(1)}" width="${bar.toFixed(1)}" height="${h(p.bot).toFixed(1)}" fill="#b35900"/></g>`;
    }).join("");
    const first = points.length ? new Date(points[0].at).toLocaleString() : "";
    const last = points.length > 1 ? new Date(points[points.length - 1].at).toLocaleString() : "";
    $("chart").innerHTML =
      `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${label}">` +
      `<line x1="${P}" y1="${H - P}" x2="${W - P}" y2="${H - P}" stroke="#767676"/>` +
      `<line x1="${P}" y1="${P}" x2="${P}" y2="${H - P}" stroke="#767676"/>` +
      `<text x="${P - 6}" y="${P + 4}" text-anchor="end" font-size="12">${max}</text>` +
      `<text x="${P - 6}" y="${H - P}" text-anchor="end" font-size="12">0</text>` +
      `<text x="${P}" y="${H - 10}" font-size="12">${first}</text>` +
      `<text x="${W - P}" y="${H - 10}" text-anchor="end" font-size="12">${last}</text>` +
      bars + `</svg>`;
    $("chart").dataset.human = human;
    $("chart").dataset.bot = bot;
  }

  async function selectBroadcast(id) {
    selected = id;
    for (const tr of $("broadcast-rows").children) tr.classList.toggle("selected", tr.dataset.broadcast === id);
    $("timeline-name").textContent = id;
    const t = await api(`/api/v1/broadcasts/${encodeURIComponent(id)}/timeline?bucket=${$("bucket").value}`);
    chart(t.points);
    $("timeline").hidden = false;
  }

  async function showClicks(code) {
    const body = $("click-rows");
    body.textContent = "";
    try {
      const res = await api(`/api/v1/links/${encodeURIComponent(code)}/clicks?limit=50`);
      for (const c of res.clicks) {
        const tr = document.createElement("tr");
        cell(tr, when(c.at));
        cell(tr, c.class, "verdict-" + c.class, "class");
        cell(tr, c.reason, null, "reason");
        cell(tr, c.user_agent || "", "ua");
        cell(tr, c.ip || "");
        body.appendChild(tr);
      }
      status(`${res.clicks.length} recent clicks of ${code}.`);
    } catch (e) {
      status(`Clicks of ${code}: ${e.message}`, true);
    }
  }

  async function loadWebhooks() {
    try {
      const res = await api("/api/v1/webhooks/logs?limit=50");
      const body = $("webhook-rows");
      body.textContent = "";
      for (const l of res.logs) {
        const tr = document.createElement("tr");
        const failed = !(l.response_code >= 200 && l.response_code < 300);
        if (failed) tr.className = "failed";
        cell(tr, when(l.at));
        cell(tr, l.type);
        cell(tr, l.attempt, "num");
        cell(tr, (failed ? "✗ " : "✓ ") + l.outcome, null, "outcome");
        cell(tr, l.response_code ?? "—", "num");
        cell(tr, l.response_time_ms + " ms", "num");
        cell(tr, l.error || "");
        body.appendChild(tr);
      }
      $("webhooks").hidden = false;
    } catch (e) {
      if (e.status !== 403) throw e; // a key without webhooks.read simply has no delivery log
    }
  }

  async function load() {
    if (!sessionStorage.getItem(KEY)) {
      status("Enter an API key with the stats.read permission.");
      return;
    }
    status("Loading…");
    try {
      const res = await api("/api/v1/broadcasts");
      renderBroadcasts(res.broadcasts);
      $("link").hidden = false;
      if (res.broadcasts.length) await selectBroadcast(selected || res.broadcasts[0].broadcast_id);
      await loadWebhooks();
      if (codeFromHash) {
        $("code").value = codeFromHash;
        await showClicks(codeFromHash);
      }
      status(`Updated ${new Date().toLocaleTimeString()}.`);
      document.body.dataset.ready = "true";
    } catch (e) {
      status(e.status === 401 ? "That API key is not valid." : "Could not load: " + e.message, true);
    }
  }

  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("key").value.trim());
    $("key").value = "";
    load();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    location.reload();
  });
  $("bucket").addEventListener("change", () => selected && selectBroadcast(selected));
  $("link-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    showClicks($("code").value.trim());
  });
  load();
})();
