// One series, per PACS that sent it (/api/series/{uid}): progress, markers, its associations,
// its jobs and their deliveries; read again when /api/events says it or one of its jobs changed.
"use strict";

const uid = main.dataset.uid;
const section = document.getElementById("series");

function table(heads, rows) {
  const t = document.createElement("table");
  const head = t.createTHead().insertRow();
  for (const h of Object.values(heads)) {
    const th = document.createElement("th");
    th.textContent = h;
    head.appendChild(th);
  }
  const body = t.createTBody();
  for (const r of rows) {
    const tr = document.createElement("tr");
    for (const name of Object.keys(heads)) cell(tr, name, r[name]);
    if (r.state) tr.dataset.state = r.state;
    body.appendChild(tr);
  }
  return t;
}

function heading(text) {
  const h = document.createElement("h3");
  h.textContent = text;
  return h;
}

function part(s) {
  const div = document.createElement("div");
  div.className = "pacs";
  div.dataset.pacs = s.pacs;
  div.dataset.state = s.state;
  const summary = document.createElement("p");
  const bar = document.createElement("progress");
  bar.max = s.expected || s.received || 1;
  bar.value = s.received;
  summary.append(
    `${s.pacs} · ${s.series_description || ""} (${s.modality || "?"}) · patient ${s.patient_id} · `,
    bar,
    ` ${s.received}${s.expected ? " / " + s.expected : ""} · ${s.state}${s.end_reason ? " (" + s.end_reason + ")" : ""}`,
    ` · ${s.files} files`,
  );
  summary.className = "summary";
  div.append(summary);
  div.append(heading("Associations"), table(
    { ended: "Ended", peer: "Peer", received: "Received", stored: "Stored", duplicate: "Duplicate", outcome: "Outcome", error: "First error" },
    s.associations.map((a) => ({ ...a, ended: when(a.ended), peer: `${a.calling_ae} ${a.peer_address}:${a.peer_port}`, error: a.first_error })),
  ));
  div.append(heading("Markers"), table(
    { key: "Marker", value: "Value", at: "Registered" },
    s.markers.map((m) => ({ ...m, at: when(m.creation_date) })),
  ));
  const jobs = table(
    { id: "Job", rule: "Rule", state: "State", attempts: "Attempts", error: "Last error" },
    s.jobs.map((j) => ({ ...j, attempts: `${j.attempts} / ${j.max_attempts}`, error: j.last_error })),
  );
  jobs.querySelectorAll("td.id").forEach((td) => link(td, `/jobs/${td.textContent}`, td.textContent));
  div.append(heading("Jobs"), jobs);
  div.append(heading("Deliveries"), table(
    { id: "Delivery", job_id: "Job", destination: "Destination", state: "State", error: "Last error" },
    s.deliveries.map((d) => ({ ...d, error: d.last_error })),
  ));
  return div;
}

async function load() {
  const answer = await fetch(`/api/series/${encodeURIComponent(uid)}`);
  if (!answer.ok) {
    message.textContent = `series ${uid}: ${(await answer.json()).detail}`;
    return;
  }
  section.replaceChildren(...(await answer.json()).map(part));
  section.dataset.ready = "1";
}

const events = liveEvents();
events.addEventListener("series", (e) => { if (JSON.parse(e.data).SeriesInstanceUID === uid) load(); });
events.addEventListener("job", () => load());
load();
