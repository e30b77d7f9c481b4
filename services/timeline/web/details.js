// The details panel: one entry in full (times, actor, system, data with withheld markers, its
// place in the hash chain) and the waterfall of the trace it belongs to.
import { describeError, getJson } from "./api.js";
import { lane as laneInfo } from "./timeline.js";
import { duration, fill, h, offset, shortType, timeBoth, toMillis } from "./dom.js";

const traces = new Map();
let shownSeq = null;

function isWithheld(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value)
    && Object.keys(value).length === 1 && typeof value.withheld === "string";
}

function withheldMarker(cls) {
  return h("span", { class: "withheld", dataset: { testid: "withheld" }, text: `withheld: ${cls}` });
}

/** Data as a nested definition list; withheld fields show as such, never silently empty. */
export function renderData(value) {
  if (isWithheld(value)) return withheldMarker(value.withheld);
  if (value === null || value === undefined) return h("span", { class: "muted", text: "null" });
  if (Array.isArray(value)) {
    if (!value.length) return h("span", { class: "muted", text: "[ ]" });
    return h("ol", { class: "data-list", start: 0 }, value.map((item) => h("li", {}, renderData(item))));
  }
  if (typeof value === "object") {
    const keys = Object.keys(value);
    if (!keys.length) return h("span", { class: "muted", text: "{ }" });
    return h("dl", { class: "data" }, keys.flatMap((key) => [
      h("dt", { text: key }),
      h("dd", {}, renderData(value[key])),
    ]));
  }
  const text = String(value);
  if (text.length > 160 || text.includes("\n")) return h("pre", { class: "long", text });
  return h("span", { class: typeof value === "string" ? "str" : "lit", text });
}

// The event's own fields first, then folded what its envelope adds to the facts above (the
// timeline API leaves out envelope fields the entry already carries: ids, times, source …).
function dataOf(data) {
  if (!data || typeof data !== "object" || !("envelope" in data)) return renderData(data);
  const { envelope, ...fields } = data;
  return [
    renderData(fields),
    h("details", { class: "envelope" }, h("summary", { text: "Envelope" }), renderData(envelope)),
  ];
}

function fact(label, ...value) {
  return [h("dt", { text: label }), h("dd", {}, ...value)];
}

/** Fill `panel` with `entry`; `context` has t0, brokenSeq and jump(seq). */
export function showEntry(panel, entry, context) {
  shownSeq = entry.seq;
  const lane = laneInfo(entry.lane);
  const broken = context.brokenSeq === entry.seq;
  const classes = entry.classification || [];
  fill(panel,
    h("header", { class: "entry-head", style: `--lane:${lane.color}` },
      h("span", { class: "lane-pill", text: lane.label }),
      h("h3", { dataset: { testid: "entry-type" }, text: shortType(entry.event_type) }),
      h("span", { class: "mono muted", text: `entry #${entry.seq}` })),
    broken ? h("p", { class: "chain-bad-note", role: "note",
      text: `The hash chain breaks at this entry (${context.problem.kind}): ${context.problem.detail}` }) : null,
    entry.summary ? h("p", { class: "entry-summary", dataset: { testid: "entry-summary" }, text: entry.summary }) : null,
    h("dl", { class: "facts compact" },
      fact("Occurred", timeBoth(entry.occurred_at),
        h("span", { class: "rel mono", text: offset(toMillis(entry.occurred_at) - context.t0) })),
      fact("Recorded", timeBoth(entry.recorded_at)),
      fact("Actor", entry.actor ? h("span", { class: "mono", dataset: { testid: "entry-actor" }, text: entry.actor }) : h("span", { class: "muted", text: "—" })),
      entry.building || entry.room ? fact("Place", [entry.building && `Building ${entry.building}`, entry.room && `room ${entry.room}`].filter(Boolean).join(", ")) : null,
      fact("System", h("span", { class: "mono", dataset: { testid: "entry-source" }, text: entry.source || "—" })),
      fact("Event id", h("span", { class: "mono small", text: entry.event_id })),
      fact("Drill / real", entry.exercise ? h("span", { class: "badge badge-drill", text: "Drill" }) : h("span", { class: "badge badge-real", text: "Real" })),
      fact("Classification", ...classes.map((c) => h("span", { class: `badge badge-class${c === "INTERNAL" || c === "PUBLIC" ? "" : " sensitive"}`, text: c }))),
    ),
    entry.withheld?.length
      ? h("p", { class: "withheld-note", dataset: { testid: "withheld-note" } },
        "Withheld from you (your clearance does not cover them): ",
        entry.withheld.map((path, i) => [i ? ", " : "", h("code", { text: path })]))
      : null,
    h("section", { class: "panel-section", "aria-live": "polite" },
      h("h4", {}, "Trace ", entry.trace_id ? h("code", { class: "small", text: entry.trace_id }) : null),
      h("div", { class: "trace", dataset: { testid: "trace-waterfall" } },
        entry.trace_id ? h("p", { class: "muted", text: "Loading trace…" })
          : h("p", { class: "muted", text: "This entry carries no trace context." }))),
    h("section", { class: "panel-section" },
      h("h4", { text: "Data" }),
      h("div", { class: "data-wrap", dataset: { testid: "entry-data" } }, dataOf(entry.data))),
    h("section", { class: "panel-section" },
      h("h4", { text: "Hash chain" }),
      h("dl", { class: "facts compact hashes" },
        fact("Hash", h("code", { class: "hash", dataset: { testid: "entry-hash" }, text: entry.hash })),
        fact("Previous", h("code", { class: "hash", dataset: { testid: "entry-prev-hash" }, text: entry.prev_hash }),
          entry.seq > 1 ? h("button", { type: "button", class: "link", onclick: () => context.jump(entry.seq - 1), text: `entry #${entry.seq - 1}` }) : h("span", { class: "muted", text: "(start of chain)" })))),
  );
  if (entry.trace_id) loadTrace(panel.querySelector("[data-testid=trace-waterfall]"), entry);
}

async function loadTrace(target, entry) {
  let pending = traces.get(entry.trace_id);
  if (!pending) {
    pending = getJson(`/api/v1/traces/${encodeURIComponent(entry.trace_id)}`);
    traces.set(entry.trace_id, pending);
    pending.catch(() => traces.delete(entry.trace_id));
  }
  try {
    const trace = await pending;
    if (shownSeq === entry.seq) waterfall(target, trace, entry.span_id);
  } catch (err) {
    if (shownSeq !== entry.seq) return;
    const { title, detail } = describeError(err, "trace");
    fill(target, h("p", { class: "error inline", role: "alert" }, h("strong", { text: title }), " ", detail));
  }
}

const SERVICE_COLORS = ["#2f6fdf", "#c2410c", "#b91c1c", "#6d28d9", "#0f766e", "#a16207", "#be185d", "#4d7c0f"];

function serviceColor(service, palette) {
  if (!palette.has(service)) palette.set(service, SERVICE_COLORS[palette.size % SERVICE_COLORS.length]);
  return palette.get(service);
}

/** Spans as a waterfall: depth-first by parent, bars offset and sized by start and duration. */
export function waterfall(target, trace, highlightSpan) {
  const spans = trace.spans || [];
  if (!spans.length) {
    fill(target, h("p", { class: "muted", text: "No spans recorded for this trace yet." }));
    return;
  }
  const byId = new Map(spans.map((s) => [s.span_id, s]));
  const children = new Map();
  const roots = [];
  for (const span of spans) {
    span._start = toMillis(span.start);
    span._end = span.end ? toMillis(span.end) : span._start + (span.duration_ms || 0);
    if (span.parent_span_id && byId.has(span.parent_span_id)) {
      if (!children.has(span.parent_span_id)) children.set(span.parent_span_id, []);
      children.get(span.parent_span_id).push(span);
    } else {
      roots.push(span);
    }
  }
  const byStart = (a, b) => a._start - b._start;
  const rows = [];
  const visit = (span, depth) => {
    rows.push([span, depth]);
    for (const child of (children.get(span.span_id) || []).sort(byStart)) visit(child, depth + 1);
  };
  roots.sort(byStart).forEach((span) => visit(span, 0));
  const start = Math.min(...spans.map((s) => s._start));
  const end = Math.max(...spans.map((s) => s._end));
  const total = Math.max(end - start, 0.001);
  const palette = new Map();
  const services = [...new Set(rows.map(([s]) => s.service || "unknown"))];
  fill(target, 
    h("div", { class: "wf-legend" },
      services.map((service) => h("span", { class: "wf-service", style: `--svc:${serviceColor(service, palette)}`, text: service })),
      h("span", { class: "muted wf-total", text: `${spans.length} span${spans.length === 1 ? "" : "s"} · ${duration(total)}` })),
    h("div", { class: "wf-axis", "aria-hidden": "true" },
      h("span", { text: "0" }), h("span", { text: duration(total / 2) }), h("span", { text: duration(total) })),
    h("ol", { class: "wf", "aria-label": "Spans of this trace, nested by parent" },
      rows.map(([span, depth]) => {
        const color = serviceColor(span.service || "unknown", palette);
        const dur = span.duration_ms ?? span._end - span._start;
        const left = ((span._start - start) / total) * 100;
        const width = Math.max((dur / total) * 100, 0.6);
        const failed = span.status && /error/i.test(String(span.status));
        return h("li", {
          class: `wf-row${span.span_id === highlightSpan ? " mine" : ""}${failed ? " failed" : ""}`,
          dataset: { testid: "trace-span", spanId: span.span_id, service: span.service || "", name: span.name },
          title: `${span.name} (${span.service}) ${span.kind || ""} · starts +${duration(span._start - start)} · ${duration(dur)}${span.status ? ` · ${span.status}` : ""}`,
        },
        h("span", { class: "wf-label", style: `padding-left:${depth * 12}px` },
          h("span", { class: "wf-name", text: span.name }),
          h("span", { class: "wf-svc", style: `--svc:${color}`, text: span.service || "" })),
        h("span", { class: "wf-track" },
          h("span", { class: "wf-bar", style: `left:${Math.min(left, 99.4)}%;width:${width}%;--svc:${color}` })),
        h("span", { class: "wf-dur mono", text: duration(dur) }));
      })),
  );
}
