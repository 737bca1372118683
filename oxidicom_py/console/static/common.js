// Shared by the console's pages (loaded before each page's own script).
"use strict";

const main = document.querySelector("main");
const message = document.getElementById("message");
const actions = document.body.dataset.actions === "on";
const token = document.getElementById("token");

if (token) {
  token.value = sessionStorage.getItem("oxidicom-token") || "";
  token.addEventListener("change", () => sessionStorage.setItem("oxidicom-token", token.value));
}

// The <td class=name> of a row, made when missing, its text set.
function cell(tr, name, text) {
  let td = tr.querySelector(`td.${name}`);
  if (!td) {
    td = document.createElement("td");
    td.className = name;
    tr.appendChild(td);
  }
  td.textContent = text ?? "";
  return td;
}

// A new row of tbody with these cells (name -> text), appended.
function addRow(tbody, cells) {
  const tr = document.createElement("tr");
  for (const [name, text] of Object.entries(cells)) cell(tr, name, text);
  tbody.appendChild(tr);
  return tr;
}

// A link as the only content of td.
function link(td, href, text) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  td.replaceChildren(a);
  return a;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function bytes(n) {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(1)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

// POST an action with the token typed in the header; its answer shown in #message, then done().
async function act(url, done) {
  const answer = await fetch(url, {
    method: "POST",
    headers: { Authorization: `Bearer ${token ? token.value : ""}` },
  });
  const said = await answer.json();
  message.textContent = answer.ok ? said.detail : `refused (${answer.status}): ${said.detail}`;
  message.dataset.status = String(answer.status);
  if (done) done();
}

// A button in td that runs act(url) when clicked (only when the console allows actions).
function actionButton(td, what, url, done) {
  if (!actions) return;
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = what;
  button.className = what;
  button.addEventListener("click", () => act(url, done));
  td.appendChild(button);
}

// The retry / cancel buttons a job in this state offers.
function jobButtons(td, job, done) {
  const choices = { failed: ["retry"], cancelled: ["retry"], queued: ["cancel"], running: ["cancel"] }[job.state] || [];
  for (const what of choices) actionButton(td, what, `/api/jobs/${job.id}/${what}`, done);
}

// /api/events, its connection state shown in the header's #live.
function liveEvents() {
  const live = document.getElementById("live");
  const events = new EventSource("/api/events");
  events.onopen = () => { live.dataset.state = "live"; live.textContent = "live"; };
  events.onerror = () => { live.dataset.state = "connecting"; live.textContent = "reconnecting…"; };
  return events;
}
