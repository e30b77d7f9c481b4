// The incident page: subject facts and chain status, the swimlane timeline (loaded in pages
// of 2,000 entries), the selected entry's details and trace, the people panel, exports.
import { describeError, download, getJson, takeToken } from "./api.js";
import { showEntry } from "./details.js";
import { count, fill, h, showError, timeBoth, toMillis, words } from "./dom.js";
import { showPeople } from "./people.js";
import { Overview, SwimlaneList, lanesFor, renderLaneHeaders } from "./timeline.js";

const PAGE = 2000;
const $ = (selector) => document.querySelector(selector);

const subjectId = decodeURIComponent(window.location.pathname.replace(/^\/incidents\//, "").replace(/\/$/, ""));
const base = `/api/v1/subjects/${encodeURIComponent(subjectId)}`;
const errorBox = $("[data-testid=error]");
const detailsPanel = $("[data-testid=entry-details]");
const progress = $("[data-testid=load-progress]");

let chain = null;
let entries = [];
let shownLanes = "";

const list = new SwimlaneList($("[data-testid=timeline-scroll]"), $("[data-testid=timeline-entries]"), {
  onSelect: (entry) => {
    history.replaceState(null, "", `#seq-${entry.seq}`);
    showEntry(detailsPanel, entry, {
      t0: list.t0,
      brokenSeq: brokenSeq(),
      problem: chain?.problem,
      jump: (seq) => list.select(list.positionOfSeq(seq), { focus: true }),
    });
  },
  brokenSeq: () => brokenSeq(),
  onScroll: () => overview.paint(),
});
const overview = new Overview($("[data-testid=overview]"), list);

function brokenSeq() {
  return chain && !chain.ok && chain.problem ? chain.problem.seq : null;
}

function fact(label, ...value) {
  return h("div", {}, h("dt", { text: label }), h("dd", {}, ...value));
}

function showSubject(subject) {
  document.title = `${words(subject.type)} · ${subject.id} · SafeHub timeline`;
  $("[data-testid=subject-title]").textContent = `${words(subject.type)} — ${subject.school || subject.district || ""}`;
  const summary = $("[data-testid=subject-summary]");
  summary.textContent = subject.summary || "";
  summary.hidden = !subject.summary;
  fill($("[data-testid=subject-badges]"),
    h("span", { class: `badge badge-status-${subject.status}`, text: words(subject.status) }),
    subject.exercise ? h("span", { class: "badge badge-drill", text: "Drill" }) : h("span", { class: "badge badge-real", text: "Real emergency" }),
    h("span", { class: "badge", text: words(subject.kind) }),
  );
  fill($("[data-testid=subject-facts]"),
    fact(subject.kind === "case" ? "Case" : "Incident", h("code", { dataset: { testid: "subject-id" }, text: subject.id })),
    fact("District", subject.district || "—"),
    fact("School", subject.school || "—"),
    subject.building || subject.room
      ? fact("Place", [subject.building && `Building ${subject.building}`, subject.room && `room ${subject.room}`].filter(Boolean).join(", "))
      : null,
    subject.incident_state ? fact("Incident state", words(subject.incident_state)) : null,
    subject.srp_action ? fact("SRP action", words(subject.srp_action)) : null,
    subject.cad_status ? fact("CAD status", subject.cad_status) : null,
    fact("Opened", timeBoth(subject.opened_at)),
    fact("Last update", timeBoth(subject.updated_at)),
    fact("Entries", h("span", { dataset: { testid: "entry-count" }, text: count(subject.entry_count) })),
  );
  $("[data-testid=subject]").hidden = false;
}

function showChain(current) {
  chain = current;
  const box = $("[data-testid=chain-status]");
  box.dataset.ok = String(Boolean(current.ok));
  box.className = `chain ${current.ok ? "chain-ok" : "chain-bad"}`;
  const head = current.head_hash ? h("code", { class: "small", title: current.head_hash, text: `${current.head_hash.slice(0, 16)}…` }) : null;
  const recheck = h("button", { type: "button", class: "link", dataset: { testid: "reverify" }, onclick: reverify, text: "Verify again" });
  if (current.ok) {
    fill(box, 
      h("span", { class: "chain-icon", "aria-hidden": "true", text: "✓" }),
      h("span", {}, h("strong", { text: "Hash chain verified. " }),
        `${count(current.checked)} entries checked; none altered, removed or reordered. Head `, head, ". "),
      recheck);
  } else {
    const problem = current.problem || { seq: null, kind: "broken", detail: "" };
    fill(box, 
      h("span", { class: "chain-icon", "aria-hidden": "true", text: "✗" }),
      h("span", {}, h("strong", { text: `Hash chain BROKEN at entry #${problem.seq} (${problem.kind}). ` }),
        problem.detail, ` ${count(current.checked)} entries checked. `),
      problem.seq ? h("button", { type: "button", class: "link", dataset: { testid: "show-broken" },
        onclick: () => list.select(list.positionOfSeq(problem.seq), { focus: true }), text: `Show entry #${problem.seq}` }) : null,
      " ", recheck);
  }
  list.clear();
  list.schedule();
}

async function reverify() {
  try {
    showChain(await getJson(`${base}/verify`));
  } catch (err) {
    showError(errorBox, describeError(err, "incident"));
  }
}

function prepare(page) {
  for (const entry of page) entry._t = toMillis(entry.occurred_at);
  return page;
}

async function loadEntries() {
  let after = 0;
  let first = true;
  while (after !== null) {
    const page = await getJson(`${base}/timeline`, { after_seq: after, limit: PAGE });
    if (first) {
      showSubject(page.subject);
      showChain(page.chain);
      document.querySelector(".overview-wrap").hidden = false;
      document.querySelector(".workspace").hidden = false;
      first = false;
    }
    entries = entries.concat(prepare(page.entries));
    const lanes = lanesFor(entries, page.subject.kind);
    if (lanes.map((l) => l.id).join() !== shownLanes) {
      shownLanes = lanes.map((l) => l.id).join();
      renderLaneHeaders($("[data-testid=lanes]"), lanes);
    }
    list.setEntries(entries, lanes);
    overview.draw();
    after = page.next_after_seq ?? null;
    const expected = Math.max(page.subject.entry_count || 0, entries.length);
    progress.textContent = after === null
      ? `${count(entries.length)} entries`
      : `Loading… ${count(entries.length)} of ${count(expected)} entries`;
  }
  progress.dataset.done = "true";
}

async function loadPeople(pending) {
  try {
    const people = await pending;
    showPeople($("[data-testid=people-panel]"), people, list.t0);
  } catch (err) {
    const section = $("[data-testid=people-panel]");
    section.hidden = false;
    showError(section.querySelector(".people-body"), describeError(err, "notification record"));
    section.querySelector(".people-body").classList.add("error");
  }
}

async function exportAs(format) {
  try {
    await download(`${base}/export`, { format }, `${subjectId}.${format}`);
  } catch (err) {
    showError(errorBox, describeError(err, "export"));
  }
}

function selectFromAddress() {
  const match = /^#seq-(\d+)$/.exec(window.location.hash);
  if (match) list.select(list.positionOfSeq(Number(match[1])), { focus: false });
}

async function main() {
  takeToken();
  for (const button of document.querySelectorAll(".exports button")) {
    button.addEventListener("click", () => exportAs(button.dataset.format));
  }
  $("[data-testid=order]").addEventListener("change", (event) => list.setMode(event.target.value));
  // Asked for at once, shown once the entries give the incident's start time.
  const people = getJson(`${base}/people`);
  people.catch(() => {});
  try {
    await loadEntries();
  } catch (err) {
    progress.textContent = "";
    showError(errorBox, describeError(err, "incident"));
    if (!entries.length) return;
  }
  await loadPeople(people);
  selectFromAddress();
}

main();
