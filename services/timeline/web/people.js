// Who was notified: per recipient, each channel's queued/sent/delivered/failed times, the
// acknowledgement, and who was never reached (the question after Uvalde: who received what, when).
import { count, fill, h, offset, toMillis, utcClock, utcIso, localTime } from "./dom.js";

function at(iso, t0) {
  if (!iso) return null;
  const ms = toMillis(iso);
  return h("time", { datetime: iso, class: "mono", title: `${utcIso(iso)} · ${localTime(iso)} · ${offset(ms - t0)}`, text: utcClock(ms) });
}

function outcome(recipient, neverReached) {
  if (neverReached) return ["bad", "Never reached"];
  if (recipient.acknowledged_at) return ["ok", "Acknowledged"];
  const channels = recipient.channels || [];
  if (channels.some((c) => c.delivered_at)) return ["info", "Delivered, no ack"];
  if (channels.some((c) => c.sent_at)) return ["warn", "Sent, not confirmed"];
  if (channels.some((c) => c.failed_at)) return ["bad", "Failed"];
  return ["warn", "Queued only"];
}

function channelLine(channel, t0) {
  const steps = [
    ["queued", channel.queued_at],
    ["sent", channel.sent_at],
    ["delivered", channel.delivered_at],
    ["failed", channel.failed_at],
  ].filter(([, iso]) => iso);
  return h("li", { class: channel.failed_at ? "failed" : "" },
    h("span", { class: "chan", text: channel.channel }),
    steps.length
      ? steps.map(([label, iso]) => h("span", { class: `step step-${label}` }, `${label} `, at(iso, t0)))
      : h("span", { class: "step muted", text: "no receipt" }),
    channel.error ? h("span", { class: "chan-error", text: channel.error }) : null);
}

/** Fill the people panel from `GET /subjects/{id}/people`. */
export function showPeople(section, people, t0) {
  const body = section.querySelector(".people-body");
  const recipients = people.recipients || [];
  const never = new Set(people.never_reached || []);
  const known = new Set(recipients.map((r) => r.recipient_id));
  const rows = [
    ...recipients,
    ...[...never].filter((id) => !known.has(id)).map((id) => ({ recipient_id: id, channels: [] })),
  ];
  const outcomes = rows.map((r) => outcome(r, never.has(r.recipient_id)));
  const tally = (label) => outcomes.filter(([, text]) => text === label).length;
  const delivered = rows.filter((r) => (r.channels || []).some((c) => c.delivered_at)).length;
  section.hidden = false;
  if (!rows.length) {
    fill(body, h("p", { class: "muted", text: "Nobody was notified about this incident." }));
    return;
  }
  const summary = h("ul", { class: "tally", dataset: { testid: "people-tally" } },
    h("li", {}, h("strong", { text: count(rows.length) }), " recipients"),
    h("li", { class: "ok" }, h("strong", { text: count(delivered) }), " delivered"),
    h("li", { class: "ok" }, h("strong", { text: count(tally("Acknowledged")) }), " acknowledged"),
    h("li", { class: never.size ? "bad" : "" }, h("strong", { text: count(never.size) }), " never reached"));
  const neverList = never.size
    ? h("p", { class: "never", dataset: { testid: "never-reached" } }, h("strong", { text: "Never reached: " }),
      [...never].map((id, i) => [i ? ", " : "", h("code", { text: id })]))
    : null;
  const tbody = h("tbody");
  const fragment = document.createDocumentFragment();
  rows.forEach((recipient, i) => {
    const [kind, text] = outcomes[i];
    fragment.append(h("tr", { dataset: { testid: "person-row", recipient: recipient.recipient_id } },
      h("th", { scope: "row" }, recipient.name ? h("span", { text: recipient.name }) : null,
        h("code", { class: "small", text: recipient.recipient_id })),
      h("td", {}, h("ul", { class: "channels" }, (recipient.channels || []).map((c) => channelLine(c, t0)))),
      h("td", {}, at(recipient.acknowledged_at, t0) || h("span", { class: "muted", text: "—" })),
      h("td", {}, h("span", { class: `badge badge-${kind}`, text }))));
  });
  tbody.append(fragment);
  fill(body, summary, neverList, h("div", { class: "table-wrap" },
    h("table", { class: "people-table" },
      h("thead", {}, h("tr", {},
        h("th", { scope: "col", text: "Recipient" }),
        h("th", { scope: "col", text: "Channels (UTC)" }),
        h("th", { scope: "col", text: "Acknowledged (UTC)" }),
        h("th", { scope: "col", text: "Outcome" }))),
      tbody)));
}
