// Shared by the console's pages (loaded before each page's own script).
"use strict";

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

// /api/events, its connection state shown in the header's #live.
function liveEvents() {
  const live = document.getElementById("live");
  const events = new EventSource("/api/events");
  events.onopen = () => { live.dataset.state = "live"; live.textContent = "live"; };
  events.onerror = () => { live.dataset.state = "connecting"; live.textContent = "reconnecting…"; };
  return events;
}
