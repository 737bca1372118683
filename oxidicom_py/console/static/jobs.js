// The jobs page: the newest jobs from /api/jobs, changes live from /api/events ("job"), and the
// retry / cancel actions (POST with the token typed in the header; kept for this tab only).
"use strict";

const body = document.querySelector("#jobs tbody");
const message = document.getElementById("message");
const actions = document.body.dataset.actions === "on";
const token = document.getElementById("token");
const rows = new Map();

if (token) {
  token.value = sessionStorage.getItem("oxidicom-token") || "";
  token.addEventListener("change", () => sessionStorage.setItem("oxidicom-token", token.value));
}

async function act(id, what) {
  const answer = await fetch(`/api/jobs/${id}/${what}`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token ? token.value : ""}` },
  });
  const said = await answer.json();
  message.textContent = answer.ok ? said.detail : `refused (${answer.status}): ${said.detail}`;
  message.dataset.status = String(answer.status);
  refresh(id);
}

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
  cell(tr, "id", job.id);
  cell(tr, "rule", job.rule);
  cell(tr, "state", job.state);
  cell(tr, "attempts", `${job.attempts} / ${job.max_attempts}`);
  cell(tr, "duration", job.duration == null ? "" : `${job.duration.toFixed(1)} s`);
  cell(tr, "worker", job.worker);
  cell(tr, "error", job.last_error);
  const td = cell(tr, "actions", "");
  if (!actions) return;
  const choices = { failed: ["retry"], cancelled: ["retry"], queued: ["cancel"], running: ["cancel"] }[job.state] || [];
  for (const what of choices) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = what;
    button.className = what;
    button.addEventListener("click", () => act(job.id, what));
    td.appendChild(button);
  }
}

async function refresh(id) {
  const answer = await fetch(`/api/jobs/${id}`);
  if (answer.ok) show(await answer.json());
}

function listen() {
  const events = liveEvents();
  events.addEventListener("job", (e) => refresh(JSON.parse(e.data).id));
}

async function start() {
  listen();
  const page = await (await fetch("/api/jobs?limit=100")).json();
  for (const job of page.items.reverse()) show(job);
  document.getElementById("jobs").dataset.ready = "1";
}

start();
