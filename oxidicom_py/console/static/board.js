// The series board: the newest series from /api/series, then live changes from /api/events
// (server-sent events fed by the database's NOTIFY oxidicom_series). No libraries, no build step.
"use strict";

const body = document.querySelector("#board tbody");
const rows = new Map(); // "pacs|uid" -> <tr>

function progress(tr, received, expected) {
  const td = cell(tr, "received", "");
  const bar = document.createElement("progress");
  bar.max = expected || received || 1;
  bar.value = received;
  td.append(bar, ` ${received}${expected ? " / " + expected : ""}`);
}

function show(s) {
  const key = `${s.pacs}|${s.series_uid}`;
  let tr = rows.get(key);
  if (!tr) {
    tr = document.createElement("tr");
    for (const name of ["pacs", "patient", "modality", "study", "series", "received", "state", "end", "updated"]) {
      cell(tr, name, "");
    }
    rows.set(key, tr);
    body.prepend(tr);
  }
  tr.dataset.series = s.series_uid;
  tr.dataset.state = s.state;
  tr.dataset.received = s.received;
  cell(tr, "pacs", s.pacs);
  cell(tr, "patient", s.patient_id);
  if (s.modality !== undefined) cell(tr, "modality", s.modality);
  if (s.study_description !== undefined) cell(tr, "study", s.study_description);
  if (s.series_description !== undefined) {
    link(cell(tr, "series", ""), `/series/${encodeURIComponent(s.series_uid)}`, s.series_description || s.series_uid);
  }
  progress(tr, s.received, s.expected);
  cell(tr, "state", s.state);
  cell(tr, "end", s.end_reason);
  cell(tr, "updated", s.updated ? new Date(s.updated).toLocaleTimeString() : new Date().toLocaleTimeString());
  document.getElementById("empty").hidden = rows.size > 0;
}

async function details(pacs, uid) {
  const answer = await fetch(`/api/series/${encodeURIComponent(uid)}`);
  if (!answer.ok) return;
  for (const s of await answer.json()) if (s.pacs === pacs) show(s);
}

function listen() {
  const events = liveEvents();
  events.addEventListener("series", (e) => {
    const n = JSON.parse(e.data);
    const key = `${n.pacs}|${n.SeriesInstanceUID}`;
    const fresh = !rows.has(key);
    show({
      pacs: n.pacs, series_uid: n.SeriesInstanceUID, patient_id: n.PatientID, state: n.state,
      end_reason: n.end_reason, received: n.received, expected: n.expected,
    });
    if (fresh) details(n.pacs, n.SeriesInstanceUID);
  });
}

async function start() {
  listen();
  const answer = await fetch("/api/series?limit=100");
  const page = await answer.json();
  for (const s of page.items.reverse()) show(s);
  document.getElementById("board").dataset.ready = "1";
}

start();
