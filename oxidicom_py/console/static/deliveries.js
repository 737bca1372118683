// Failed deliveries (/api/deliveries?state=failed), each with a retry button.
"use strict";

const body = document.querySelector("#deliveries tbody");

async function load() {
  const page = await (await fetch("/api/deliveries?state=failed&limit=200")).json();
  body.replaceChildren();
  for (const d of page.items) {
    const tr = addRow(body, {
      id: d.id, job: "", destination: `${d.destination} (${d.ae_title || "?"}@${d.host || "?"}:${d.port || "?"})`,
      instance: d.sop_instance_uid, attempts: `${d.attempts} / ${d.max_attempts}`, status: d.last_status,
      error: d.last_error, actions: "",
    });
    tr.dataset.delivery = d.id;
    link(tr.querySelector("td.job"), `/jobs/${d.job_id}`, String(d.job_id));
    actionButton(tr.querySelector("td.actions"), "retry", `/api/deliveries/${d.id}/retry`, load);
  }
  document.getElementById("empty").hidden = page.items.length > 0;
  document.getElementById("deliveries").dataset.ready = "1";
}

load();
