// The jobs page: the newest jobs from /api/jobs, changes live from /api/events ("job"), and the
// retry / cancel actions.
"use strict";

const body = document.querySelector("#jobs tbody");
const rows = new Map();

function show(job) {
  let tr = rows.get(job.id);
  if (!tr) {
    tr = document.createElement("tr");
    for (const name of ["id", "rule", "state", "attempts", "duration", "worker", "error", "actions"]) cell(tr, name, "");
    rows.set(job.id, tr);
    body.prepend(tr);
  }
  tr.dataset.job = job.id;
  tr.dataset.state = job.state;
  link(cell(tr, "id", ""), `/jobs/${job.id}`, String(job.id));
  cell(tr, "rule", job.rule);
  cell(tr, "state", job.state);
  cell(tr, "attempts", `${job.attempts} / ${job.max_attempts}`);
  cell(tr, "duration", job.duration == null ? "" : `${job.duration.toFixed(1)} s`);
  cell(tr, "worker", job.worker);
  cell(tr, "error", job.last_error);
  jobButtons(cell(tr, "actions", ""), job, () => refresh(job.id));
}

async function refresh(id) {
  const answer = await fetch(`/api/jobs/${id}`);
  if (answer.ok) show(await answer.json());
}

async function start() {
  liveEvents().addEventListener("job", (e) => refresh(JSON.parse(e.data).id));
  const page = await (await fetch("/api/jobs?limit=100")).json();
  for (const job of page.items.reverse()) show(job);
  document.getElementById("jobs").dataset.ready = "1";
}

start();
