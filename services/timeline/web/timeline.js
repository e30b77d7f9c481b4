// The swimlane timeline: one row per entry (virtualised: only the rows in view exist in the
// DOM, so 10,000 entries cost what 40 do), one column per lane, and an overview strip that
// places every entry on the incident's real time axis.
import { duration, fill, h, localTime, offset, shortType, utcClock, utcIso, words } from "./dom.js";

/** The lanes every incident shows, in this order. */
export const LANES = [
  { id: "gateway", label: "Gateway", color: "#2f6fdf" },
  { id: "incidents", label: "Incidents", color: "#c2410c" },
  { id: "cad", label: "CAD", color: "#b91c1c" },
  { id: "doors", label: "Doors", color: "#6d28d9" },
  { id: "notifications", label: "Notifications", color: "#0f766e" },
  { id: "people", label: "People", color: "#a16207" },
];
const EXTRA_COLORS = ["#be185d", "#4d7c0f", "#0369a1", "#9a3412", "#475569", "#7e22ce"];
const KNOWN = new Map(LANES.map((lane) => [lane.id, lane]));
export const ROW_HEIGHT = 46;
const OVERSCAN = 8;

/** A lane's label and colour; lanes beyond the six (a case's tips, referrals…) get their own. */
export function lane(id) {
  if (!KNOWN.has(id)) {
    const color = EXTRA_COLORS[(KNOWN.size - LANES.length) % EXTRA_COLORS.length];
    KNOWN.set(id, { id, label: words(id), color });
  }
  return KNOWN.get(id);
}

/** The columns to draw: the six incident lanes, then any other lane the entries use. */
export function lanesFor(entries, kind) {
  const ids = kind === "case" ? [] : LANES.map((l) => l.id);
  const seen = new Set(ids);
  for (const entry of entries) {
    if (!seen.has(entry.lane)) {
      seen.add(entry.lane);
      ids.push(entry.lane);
    }
  }
  return ids.map(lane);
}

export function renderLaneHeaders(target, lanes) {
  fill(target,
    h("span", { class: "lh-time", text: "Time (UTC)" }),
    lanes.map((l) =>
      h("span", { class: "lh-lane", dataset: { testid: "lane-header", lane: l.id },
        style: `--lane:${l.color}`, title: l.id, text: l.label })),
    h("span", { class: "lh-desc", text: "What happened" }),
  );
}

export class SwimlaneList {
  /**
   * @param {HTMLElement} scroll the scrolling viewport
   * @param {HTMLElement} listbox the tall inner element (role=listbox) rows are placed in
   * @param {{onSelect: (entry: object) => void, brokenSeq: () => number | null}} hooks
   */
  constructor(scroll, listbox, hooks) {
    this.scroll = scroll;
    this.listbox = listbox;
    this.hooks = hooks;
    this.entries = [];
    this.lanes = LANES;
    this.laneIndex = new Map(LANES.map((l, i) => [l.id, i]));
    this.order = [];
    this.position = new Int32Array(0);
    this.mode = "time";
    this.t0 = 0;
    this.active = -1;
    this.rendered = new Map();
    this.pending = false;
    listbox.tabIndex = 0;
    scroll.addEventListener("scroll", () => this.schedule(), { passive: true });
    new ResizeObserver(() => this.schedule()).observe(scroll);
    listbox.addEventListener("keydown", (event) => this.onKey(event));
    listbox.addEventListener("click", (event) => {
      const row = event.target.closest("[role=option]");
      if (row) this.select(Number(row.dataset.pos), { focus: true });
    });
  }

  /** Replace the entries (each already carries `_t`, its occurred_at in ms) and the lanes. */
  setEntries(entries, lanes) {
    this.lanes = lanes;
    this.laneIndex = new Map(lanes.map((l, i) => [l.id, i]));
    this.scroll.parentElement.style.setProperty("--lanes", String(lanes.length));
    const activeEntry = this.order.length && this.active >= 0
      ? this.entries[this.order[this.active]] : null;
    this.entries = entries;
    this.t0 = entries.reduce((min, e) => (e._t < min ? e._t : min), Infinity);
    this.sort();
    this.listbox.style.height = `${entries.length * ROW_HEIGHT}px`;
    // A short incident gets a short list; a long one fills the screen and scrolls.
    this.scroll.style.setProperty("--content-h", `${Math.max(entries.length, 4) * ROW_HEIGHT + 2}px`);
    this.listbox.setAttribute("aria-setsize", String(entries.length));
    if (activeEntry) this.active = this.positionOfSeq(activeEntry.seq);
    this.clear();
    this.schedule();
  }

  setMode(mode) {
    const activeEntry = this.active >= 0 ? this.entries[this.order[this.active]] : null;
    this.mode = mode;
    this.sort();
    this.clear();
    if (activeEntry) this.select(this.positionOfSeq(activeEntry.seq), { notify: false });
    this.schedule();
  }

  sort() {
    const { entries } = this;
    const order = Array.from(entries.keys());
    if (this.mode === "time") order.sort((a, b) => entries[a]._t - entries[b]._t || entries[a].seq - entries[b].seq);
    else order.sort((a, b) => entries[a].seq - entries[b].seq);
    this.order = order;
    this.position = new Int32Array(entries.length);
    order.forEach((entryIndex, pos) => { this.position[entryIndex] = pos; });
    this.seqIndex = new Map(entries.map((e, i) => [e.seq, i]));
  }

  positionOfSeq(seq) {
    const index = this.seqIndex.get(seq);
    return index === undefined ? -1 : this.position[index];
  }

  entryAt(pos) {
    return this.entries[this.order[pos]];
  }

  /** The first and last entry in view, for the overview's viewport band. */
  visibleRange() {
    const first = Math.max(0, Math.floor(this.scroll.scrollTop / ROW_HEIGHT));
    const last = Math.min(this.order.length - 1,
      Math.floor((this.scroll.scrollTop + this.scroll.clientHeight) / ROW_HEIGHT));
    return [first, last];
  }

  clear() {
    for (const node of this.rendered.values()) node.remove();
    this.rendered.clear();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.render();
      this.hooks.onScroll?.();
    });
  }

  render() {
    const total = this.order.length;
    const top = this.scroll.scrollTop;
    const height = this.scroll.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(total - 1, Math.ceil((top + height) / ROW_HEIGHT) + OVERSCAN);
    for (const [pos, node] of this.rendered) {
      if (pos < first || pos > last) {
        node.remove();
        this.rendered.delete(pos);
      }
    }
    // Keep DOM order equal to timeline order: new rows go before or after the kept block.
    const kept = [...this.rendered.keys()];
    const lowKept = kept.length ? Math.min(...kept) : last + 1;
    const highKept = kept.length ? Math.max(...kept) : last;
    const before = document.createDocumentFragment();
    for (let pos = first; pos < lowKept; pos += 1) before.append(this.row(pos));
    this.listbox.prepend(before);
    const after = document.createDocumentFragment();
    for (let pos = Math.max(highKept + 1, first); pos <= last; pos += 1) after.append(this.row(pos));
    this.listbox.append(after);
  }

  /** Column of an entry's lane. */
  laneOf(entry) {
    return this.laneIndex.get(entry.lane) ?? this.lanes.length - 1;
  }

  row(pos) {
    const entry = this.entryAt(pos);
    const lane = this.laneOf(entry);
    const broken = this.hooks.brokenSeq() === entry.seq;
    const cells = this.lanes.map((l, i) => h("span", {
      class: i === lane ? "cell on" : i > lane ? "cell pass" : "cell",
      style: `--lane:${l.color}`,
    }, i === lane ? h("span", { class: "dot" }) : null));
    const node = h(
      "div",
      {
        role: "option",
        id: `entry-${entry.seq}`,
        class: `row${pos === this.active ? " active" : ""}${broken ? " broken" : ""}${entry.exercise ? " drill" : ""}`,
        style: `transform:translateY(${pos * ROW_HEIGHT}px)`,
        "aria-selected": pos === this.active ? "true" : "false",
        "aria-posinset": pos + 1,
        "aria-setsize": this.order.length,
        "aria-label": `${shortType(entry.event_type)}, ${entry.lane} lane, ${utcIso(entry.occurred_at)}: ${entry.summary || ""}`,
        title: `${utcIso(entry.occurred_at)} · ${localTime(entry.occurred_at)}`,
        dataset: {
          testid: "timeline-entry",
          pos,
          seq: entry.seq,
          lane: entry.lane,
          eventType: shortType(entry.event_type),
        },
      },
      h("span", { class: "when" },
        h("span", { class: "clock mono", text: utcClock(entry._t) }),
        h("span", { class: "rel mono", text: offset(entry._t - this.t0) })),
      ...cells,
      h("span", { class: "desc" },
        h("span", { class: "etype" },
          h("span", { class: "seq mono", text: `#${entry.seq}` }),
          shortType(entry.event_type),
          broken ? h("span", { class: "tag tag-bad", text: "chain break" }) : null,
          entry.withheld?.length ? h("span", { class: "tag tag-withheld", text: "withheld" }) : null),
        h("span", { class: "summary", text: entry.summary || "" })),
    );
    this.rendered.set(pos, node);
    return node;
  }

  /** Make `pos` the active entry, scroll it into view and (unless told not to) open it. */
  select(pos, { focus = false, notify = true } = {}) {
    if (pos < 0 || pos >= this.order.length) return;
    const previous = this.rendered.get(this.active);
    if (previous) {
      previous.classList.remove("active");
      previous.setAttribute("aria-selected", "false");
    }
    this.active = pos;
    const entry = this.entryAt(pos);
    this.listbox.setAttribute("aria-activedescendant", `entry-${entry.seq}`);
    this.reveal(pos);
    this.render();
    const node = this.rendered.get(pos);
    if (node) {
      node.classList.add("active");
      node.setAttribute("aria-selected", "true");
    }
    if (focus) this.listbox.focus({ preventScroll: true });
    if (notify) this.hooks.onSelect(entry);
  }

  reveal(pos) {
    const top = pos * ROW_HEIGHT;
    const view = this.scroll.clientHeight;
    if (top < this.scroll.scrollTop) this.scroll.scrollTop = top;
    else if (top + ROW_HEIGHT > this.scroll.scrollTop + view) this.scroll.scrollTop = top + ROW_HEIGHT - view;
  }

  onKey(event) {
    const page = Math.max(1, Math.floor(this.scroll.clientHeight / ROW_HEIGHT) - 1);
    const last = this.order.length - 1;
    const current = this.active < 0 ? -1 : this.active;
    const moves = {
      ArrowDown: current + 1,
      ArrowUp: current - 1,
      PageDown: current + page,
      PageUp: current - page,
      Home: 0,
      End: last,
    };
    if (event.key in moves) {
      event.preventDefault();
      this.select(Math.min(last, Math.max(0, moves[event.key])));
    } else if ((event.key === "Enter" || event.key === " ") && current < 0 && last >= 0) {
      event.preventDefault();
      this.select(0);
    } else if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      this.select(current);
    }
  }
}

/** The overview strip: every entry as a tick on its lane, at its real time; click to jump. */
export class Overview {
  constructor(canvas, list) {
    this.canvas = canvas;
    this.list = list;
    this.layer = document.createElement("canvas");
    this.range = [0, 1];
    new ResizeObserver(() => this.draw()).observe(canvas);
    canvas.addEventListener("click", (event) => this.jump(event));
  }

  draw() {
    const { canvas, list } = this;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    this.layer.width = canvas.width;
    this.layer.height = canvas.height;
    const ctx = this.layer.getContext("2d");
    ctx.scale(ratio, ratio);
    const labelWidth = 96;
    const { lanes } = list;
    const laneHeight = (height - 18) / lanes.length;
    const times = list.entries.map((e) => e._t);
    let start = Infinity;
    let end = -Infinity;
    for (const t of times) {
      if (t < start) start = t;
      if (t > end) end = t;
    }
    if (!Number.isFinite(start)) return;
    if (end <= start) end = start + 1;
    this.range = [start, end];
    this.geometry = { labelWidth, width, laneHeight };
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    lanes.forEach((l, i) => {
      ctx.fillStyle = i % 2 ? "#f6f7f9" : "#eef1f5";
      ctx.fillRect(labelWidth, i * laneHeight, width - labelWidth, laneHeight);
      ctx.fillStyle = "#3b4352";
      ctx.fillText(l.label, 6, i * laneHeight + laneHeight / 2);
    });
    const span = width - labelWidth - 8;
    for (const entry of list.entries) {
      const row = list.laneOf(entry);
      const x = labelWidth + 4 + ((entry._t - start) / (end - start)) * span;
      ctx.fillStyle = lanes[row].color;
      ctx.globalAlpha = 0.75;
      ctx.fillRect(x - 1, row * laneHeight + 2, 2, laneHeight - 4);
    }
    ctx.globalAlpha = 1;
    ctx.fillStyle = "#3b4352";
    const axisY = height - 8;
    ctx.fillText(utcClock(start), labelWidth, axisY);
    const endLabel = utcClock(end);
    ctx.fillText(endLabel, width - ctx.measureText(endLabel).width - 4, axisY);
    const total = `duration ${duration(end - start)}`;
    ctx.fillText(total, labelWidth + (span - ctx.measureText(total).width) / 2, axisY);
    this.paint();
  }

  /** Copy the cached ticks and draw the band of entries currently in the list's view. */
  paint() {
    const { canvas, list, geometry } = this;
    if (!geometry || !list.order.length) return;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(this.layer, 0, 0);
    const ratio = window.devicePixelRatio || 1;
    ctx.scale(ratio, ratio);
    const [first, last] = list.visibleRange();
    let low = Infinity;
    let high = -Infinity;
    for (let pos = first; pos <= last; pos += 1) {
      const t = list.entryAt(pos)._t;
      if (t < low) low = t;
      if (t > high) high = t;
    }
    const [start, end] = this.range;
    const span = geometry.width - geometry.labelWidth - 8;
    const x0 = geometry.labelWidth + 4 + ((low - start) / (end - start)) * span;
    const x1 = geometry.labelWidth + 4 + ((high - start) / (end - start)) * span;
    ctx.fillStyle = "rgba(37, 99, 235, 0.14)";
    ctx.strokeStyle = "rgba(37, 99, 235, 0.8)";
    ctx.lineWidth = 1;
    const band = Math.max(3, x1 - x0);
    const top = 0;
    const bandHeight = geometry.laneHeight * list.lanes.length;
    ctx.fillRect(x0 - 1, top, band + 2, bandHeight);
    ctx.strokeRect(x0 - 1, top + 0.5, band + 2, bandHeight - 1);
  }

  jump(event) {
    const { geometry, list } = this;
    if (!geometry || !list.order.length) return;
    const rect = this.canvas.getBoundingClientRect();
    const [start, end] = this.range;
    const span = geometry.width - geometry.labelWidth - 8;
    const t = start + ((event.clientX - rect.left - geometry.labelWidth - 4) / span) * (end - start);
    let best = 0;
    let bestDistance = Infinity;
    list.entries.forEach((entry, index) => {
      const distance = Math.abs(entry._t - t);
      if (distance < bestDistance) {
        bestDistance = distance;
        best = index;
      }
    });
    list.select(list.position[best], { focus: true });
  }
}
