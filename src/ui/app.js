// linkhit campaign console: sign-in, the views behind the URL fragment, auto-refresh. No dependencies,
// no build step; the modules talk to the JSON API with the key the user typed, which stays in this tab's
// sessionStorage. Deep links: `#broadcast=ID`, `#broadcast=ID&code=CODE`, `#code=CODE`, `#webhooks`.
// A `#key=` fragment is refused and removed: a key in a URL ends up in history, logs and screenshots.

import { $, api, key, status } from "./core.js";
import * as broadcasts from "./broadcast.js";
import * as webhooks from "./webhooks.js";

const REFRESH_MS = 10_000;
const AUTO = "linkhit.autoRefresh";

let busy = false;
let again = false; // asked for while a load ran (a click on a link): load once more after it
let loads = 0;

function route() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.has("key")) {
    params.delete("key");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
    $("key-note").hidden = false;
  }
  if (params.has("webhooks")) return { view: "webhooks" };
  const id = params.get("broadcast");
  const code = params.get("code");
  if (id) return { view: "broadcast", id, code };
  if (code) return { view: "link", code };
  return { view: "list" };
}

function showView(view, code) {
  $("view-list").hidden = !(view === "list" || view === "link");
  $("view-broadcast").hidden = view !== "broadcast";
  $("view-webhooks").hidden = view !== "webhooks";
  if (!code) $("clicks").hidden = true;
  const section = view === "webhooks" ? "webhooks" : "broadcasts";
  for (const a of $("nav").querySelectorAll("a")) {
    if (a.dataset.section === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.body.dataset.view = view;
}

// A `#code=` link: open the link's broadcast when the key may read the link, else its clicks alone.
async function openCode(code) {
  try {
    const link = await api(`/api/v1/links/${encodeURIComponent(code)}`);
    if (link.broadcast_id) {
      history.replaceState(null, "", `#broadcast=${encodeURIComponent(link.broadcast_id)}&code=${encodeURIComponent(code)}`);
      return load();
    }
  } catch (_) {
    // No links.read, or no such link: the clicks call below says which.
  }
  await Promise.all([broadcasts.loadList(), broadcasts.showLinkOnly(code)]);
}

function report(what) {
  return (e) => {
    if (e.status === 401) return signOut("That API key is not valid (or was revoked).");
    const why = e.status === 403 ? "this key lacks the permission for it" : e.message;
    status(`${what}: ${why}`, true);
  };
}

// Loads what the fragment names, or refreshes it in place (search, page and open link are kept).
async function load() {
  if (!key.get()) return;
  const r = route();
  showView(r.view, r.code);
  if (r.view === "webhooks") await webhooks.showWebhooks();
  else if (r.view === "broadcast") await broadcasts.showBroadcast(r.id, r.code);
  else if (r.view === "link") await openCode(r.code);
  else await broadcasts.loadList();
}

async function refresh() {
  if (!key.get()) return;
  if (busy) {
    again = true;
    return;
  }
  busy = true;
  try {
    await load();
    status("");
    $("updated").textContent = "Updated " + new Date().toLocaleTimeString();
    document.body.dataset.ready = "true";
    document.body.dataset.loads = String(++loads);
  } catch (e) {
    const view = document.body.dataset.view;
    report(view === "webhooks" ? "Webhooks" : view === "broadcast" ? "Broadcast" : "Broadcasts")(e);
  } finally {
    busy = false;
    if (again) {
      again = false;
      refresh();
    }
  }
}

function signedIn(yes) {
  $("login").hidden = yes;
  for (const id of ["nav", "session", "views"]) $(id).hidden = !yes;
}

function signOut(why) {
  key.clear();
  signedIn(false);
  status(why || "", Boolean(why));
  $("key").focus();
}

const autoOn = () => sessionStorage.getItem(AUTO) !== "off";

function showAuto() {
  const on = autoOn();
  $("auto-refresh").setAttribute("aria-pressed", String(on));
  $("auto-refresh").textContent = on ? "Auto-refresh: on" : "Auto-refresh: off";
}

$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const value = $("key").value.trim();
  $("key").value = "";
  if (!value) return;
  key.set(value);
  $("key-note").hidden = true;
  signedIn(true);
  refresh();
});
$("forget").addEventListener("click", () => signOut("Key forgotten."));
$("auto-refresh").addEventListener("click", () => {
  sessionStorage.setItem(AUTO, autoOn() ? "off" : "on");
  showAuto();
  if (autoOn()) refresh();
});
window.addEventListener("hashchange", () => {
  route(); // drops a `#key=` even when signed out
  refresh();
});
document.addEventListener("visibilitychange", () => !document.hidden && autoOn() && refresh());
let frame = 0;
window.addEventListener("resize", () => {
  cancelAnimationFrame(frame);
  frame = requestAnimationFrame(broadcasts.redrawChart);
});
setInterval(() => autoOn() && !document.hidden && refresh(), REFRESH_MS);

// Anything the Content-Security-Policy blocks is a bug of this page: counted where a test can see it.
document.addEventListener("securitypolicyviolation", (e) => {
  document.body.dataset.cspViolations = String(Number(document.body.dataset.cspViolations || 0) + 1);
  console.error("blocked by the Content-Security-Policy:", e.violatedDirective, e.blockedURI);
});

broadcasts.setUp(report);
webhooks.setUp(report);
showAuto();
route(); // drops a `#key=` before anything else runs
signedIn(Boolean(key.get()));
if (key.get()) refresh();
else status("Enter an API key with the stats.read permission.");
