// The incident list: filters (kept in the address), newest first, paging with next_cursor.
import { describeError, getJson, takeToken } from "./api.js";
import { count, h, localTime, showError, utcIso, words } from "./dom.js";

const FILTERS = ["kind", "district", "school", "from", "to", "type", "status", "exercise"];
const PAGE = 50;

const form = document.getElementById("filters");
const tbody = document.querySelector("[data-testid=subjects] tbody");
const more = document.querySelector("[data-testid=load-more]");
const statusLine = document.querySelector("[data-testid=list-status]");
const errorBox = document.querySelector("[data-testid=error]");

let cursor = null;
let shown = 0;
let generation = 0;

// datetime-local has no zone: the form says UTC, so the value is read as UTC.
function asUtc(value) {
  if (!value) return "";
  return `${value.length === 16 ? `${value}:00` : value}Z`;
}

function fromUtc(value) {
  return value ? value.replace(/Z$/, "").slice(0, 19) : "";
}

function query() {
  const data = new FormData(form);
  const params = { limit: PAGE };
  for (const name of FILTERS) {
    const value = String(data.get(name) || "").trim();
    if (value) params[name] = name === "from" || name === "to" ? asUtc(value) : value;
  }
  return params;
}

function restoreFilters() {
  const params = new URLSearchParams(window.location.search);
  for (const name of FILTERS) {
    const value = params.get(name);
    if (value !== null) {
      form.elements[name].value = name === "from" || name === "to" ? fromUtc(value) : value;
    }
  }
}

function keepInAddress(params) {
  const search = new URLSearchParams();
  for (const name of FILTERS) if (params[name]) search.set(name, params[name]);
  const text = search.toString();
  history.replaceState(null, "", text ? `/?${text}` : "/");
}

function badge(kind, text) {
  return h("span", { class: `badge badge-${kind}`, text });
}

function row(item) {
  const href = `/incidents/${encodeURIComponent(item.id)}`;
  const open = () => window.location.assign(href);
  return h(
    "tr",
    { dataset: { testid: "subject-row", id: item.id }, onclick: (e) => {
      if (!(e.target instanceof HTMLAnchorElement)) open();
    } },
    h("td", {}, h("time", { class: "mono", datetime: item.opened_at, text: utcIso(item.opened_at) }),
      h("span", { class: "local", text: localTime(item.opened_at) })),
    h("td", {}, h("a", { href, class: "mono", text: item.id })),
    h("td", { text: words(item.type) }),
    h("td", { text: item.school || "—" }),
    h("td", { text: item.district || "—" }),
    h("td", {}, badge(`status-${item.status}`, words(item.status))),
    h("td", {}, item.exercise ? badge("drill", "Drill") : badge("real", "Real")),
    h("td", { class: "num", text: count(item.entry_count) }),
    h("td", {}, h("time", { class: "mono", datetime: item.updated_at, text: utcIso(item.updated_at) })),
  );
}

async function load(reset) {
  const mine = reset ? ++generation : generation;
  const params = query();
  if (reset) {
    cursor = null;
    shown = 0;
    keepInAddress(params);
    tbody.replaceChildren();
  }
  if (cursor) params.cursor = cursor;
  errorBox.hidden = true;
  more.disabled = true;
  statusLine.textContent = "Loading…";
  try {
    const page = await getJson("/api/v1/subjects", params);
    if (mine !== generation) return;
    const fragment = document.createDocumentFragment();
    for (const item of page.items) fragment.append(row(item));
    tbody.append(fragment);
    shown += page.items.length;
    cursor = page.next_cursor;
    more.hidden = !cursor;
    const noun = params.kind === "case" ? "case" : "incident";
    statusLine.textContent = shown
      ? `${count(shown)} ${noun}${shown === 1 ? "" : "s"}${cursor ? " so far, newest first" : ", newest first"}`
      : `No ${noun}s match these filters.`;
  } catch (err) {
    if (mine !== generation) return;
    statusLine.textContent = "";
    showError(errorBox, describeError(err, "incident list"));
  } finally {
    more.disabled = false;
  }
}

takeToken();
restoreFilters();
form.addEventListener("submit", (e) => {
  e.preventDefault();
  load(true);
});
form.addEventListener("reset", () => setTimeout(() => load(true)));
more.addEventListener("click", () => load(false));
load(true);
