// The associations log (/api/associations), filtered by the form.
"use strict";

const body = document.querySelector("#associations tbody");
const form = document.getElementById("filter");

function seriesLinks(td, uids) {
  td.replaceChildren();
  for (const uid of uids) {
    const a = document.createElement("a");
    a.href = `/series/${encodeURIComponent(uid)}`;
    a.textContent = uid.length > 24 ? `…${uid.slice(-20)}` : uid;
    a.title = uid;
    td.append(a, " ");
  }
}

async function load() {
  const query = new URLSearchParams({ limit: "200" });
  const ae = form.elements.calling_ae.value.trim();
  if (ae) query.set("calling_ae", ae);
  if (form.elements.problems.checked) query.set("problems", "true");
  const page = await (await fetch(`/api/associations?${query}`)).json();
  body.replaceChildren();
  for (const a of page.items) {
    const tr = addRow(body, {
      ended: when(a.ended), calling: a.calling_ae, called: a.called_ae, peer: `${a.peer_address}:${a.peer_port}`,
      received: a.received, stored: a.stored, duplicate: a.duplicate, refused: a.rejected + a.failed,
      bytes: bytes(a.bytes), outcome: a.outcome, error: a.first_error, series: "",
    });
    tr.dataset.ulid = a.ulid;
    tr.dataset.outcome = a.outcome;
    tr.title = a.tls_subject ? `${a.ulid} · TLS ${a.tls_subject}` : a.ulid;
    seriesLinks(tr.querySelector("td.series"), a.series_uids);
  }
  document.getElementById("associations").dataset.ready = "1";
}

form.addEventListener("submit", (e) => { e.preventDefault(); load(); });
load();
