// Shared helpers of the campaign console: the API call with this tab's key, element builders and
// number formatting. The key lives in sessionStorage only (this tab, gone when it closes); it is never
// put in a URL, a link or the page.

const KEY = "linkhit.apiKey";

export const $ = (id) => document.getElementById(id);

export const key = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

// An API error: the HTTP status and the body's stable `code` and human `message`.
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  const headers = { Authorization: "Bearer " + (key.get() || "") };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new ApiError(res.status, data.code, data.message || `${res.status} ${res.statusText}`);
  return data;
}

// `el("td", {class: "num", "data-field": "links"}, "12")`: attributes are set with setAttribute (never
// parsed markup), `text` sets the text, `on<event>` adds a listener.
export function el(tag, attrs, ...children) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export const svg = (tag, attrs, ...children) => el("svg:" + tag, attrs, ...children);

// Replaces a node's children.
export function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

export const num = (n) => Number(n || 0).toLocaleString("en-US");
export const pct = (part, whole) => (whole > 0 ? ((100 * part) / whole).toFixed(1) + "%" : "—");
export const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");

// `{"USD": 49.9, "EUR": 10}` → "$49.90 · €10.00" (empty when there is no value).
export function money(values) {
  return Object.entries(values || {})
    .map(([currency, value]) => {
      try {
        return new Intl.NumberFormat("en-US", { style: "currency", currency }).format(value);
      } catch (_) {
        return `${value} ${currency}`;
      }
    })
    .join(" · ");
}

// The page's status line (errors in red).
export function status(text, isError) {
  $("status").textContent = text || "";
  $("status").className = isError ? "error" : "";
}

// A table cell; `field` names the number for tests and scripts (`data-field`).
export function cell(text, cls, field) {
  return el("td", { class: cls, "data-field": field }, text ?? "");
}

export const forbidden = (e) => e instanceof ApiError && e.status === 403;
