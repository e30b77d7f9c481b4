// Small DOM and time helpers shared by the pages. Text always goes in as text, never as HTML.

/** Create an element: `h("td", {class: "x", dataset: {seq: 1}}, "text", child)`. */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") setStyle(node, value);
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  if (children.length) fill(node, ...children);
  return node;
}

// The service's Content-Security-Policy forbids style attributes; CSSOM properties are allowed.
function setStyle(node, text) {
  for (const declaration of text.split(";")) {
    const colon = declaration.indexOf(":");
    if (colon > 0) node.style.setProperty(declaration.slice(0, colon).trim(), declaration.slice(colon + 1).trim());
  }
}

/** Replace `target`'s children; nested arrays are flattened, null/undefined/false skipped. */
export function fill(target, ...children) {
  const nodes = [];
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    nodes.push(child instanceof Node ? child : String(child));
  }
  target.replaceChildren(...nodes);
  return target;
}

/** Show an error state in `target` (an element with role="alert"). */
export function showError(target, { title, detail }) {
  fill(target, h("strong", { text: title }), " ", h("span", { text: detail }));
  target.hidden = false;
}

const ISO = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$/;

/** Milliseconds since the epoch (fractional, keeps microseconds) of an ISO-8601 string. */
export function toMillis(iso) {
  if (!iso) return NaN;
  const m = ISO.exec(iso);
  if (!m) return Date.parse(iso);
  const fraction = (m[3] || "").padEnd(6, "0");
  const whole = Date.parse(`${m[1]}T${m[2]}${m[4] || "Z"}`);
  return whole + Number(fraction.slice(0, 6)) / 1000;
}

function pad(n, width = 2) {
  return String(n).padStart(width, "0");
}

/** `2026-11-23T09:30:01.123456Z`: UTC, ISO-8601, microseconds when the source had them. */
export function utcIso(iso) {
  const ms = toMillis(iso);
  if (Number.isNaN(ms)) return iso || "—";
  const d = new Date(Math.floor(ms));
  const micros = Math.round((ms - Math.floor(ms / 1000) * 1000) * 1000);
  return (
    `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}` +
    `T${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}` +
    `.${pad(micros, 6)}Z`
  );
}

/** `09:30:01.123` UTC time of day. */
export function utcClock(ms) {
  const d = new Date(Math.floor(ms));
  return (
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}` +
    `.${pad(d.getUTCMilliseconds(), 3)}`
  );
}

const LOCAL = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  fractionalSecondDigits: 3,
  timeZoneName: "short",
});

/** The same instant in the browser's time zone, for people who think in local time. */
export function localTime(iso) {
  const ms = toMillis(iso);
  return Number.isNaN(ms) ? "—" : LOCAL.format(new Date(ms));
}

/** A `<time>` element showing UTC ISO with the local time beside it. */
export function timeBoth(iso) {
  if (!iso) return h("span", { class: "muted", text: "—" });
  return h(
    "span",
    { class: "time-both" },
    h("time", { datetime: iso, class: "mono", text: utcIso(iso) }),
    h("span", { class: "local", text: localTime(iso) }),
  );
}

/** `+1:02.345` relative offset (minutes:seconds) from the start of the incident. */
export function offset(ms) {
  const sign = ms < 0 ? "−" : "+";
  const abs = Math.abs(ms);
  const minutes = Math.floor(abs / 60000);
  const seconds = (abs - minutes * 60000) / 1000;
  return `T${sign}${minutes}:${seconds.toFixed(3).padStart(6, "0")}`;
}

/** `1.23 ms`, `45 ms`, `2.1 s`. */
export function duration(ms) {
  if (!Number.isFinite(ms)) return "—";
  if (ms < 10) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  const seconds = Math.round(ms / 1000);
  const [hours, minutes, rest] = [Math.floor(seconds / 3600), Math.floor(seconds / 60) % 60, seconds % 60];
  return hours ? `${hours} h ${minutes} min ${rest} s` : `${minutes} min ${rest} s`;
}

/** `12,345`. */
export function count(n) {
  return Number(n || 0).toLocaleString("en-US");
}

/** Human words for an enum-ish value: `ACTIVE_ASSAILANT` → `Active assailant`. */
export function words(value) {
  if (!value) return "—";
  const text = String(value).replaceAll("_", " ").toLowerCase();
  return text[0].toUpperCase() + text.slice(1);
}

/** The short name of an event type: `safehub.events.PanicAlert` → `PanicAlert`. */
export function shortType(type) {
  return String(type || "").split(".").pop();
}
