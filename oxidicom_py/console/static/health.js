// Health: the database's answer, queue depths and the receivers' heartbeats (/api/health).
"use strict";

async function load() {
  const answer = await fetch("/api/health");
  const h = await answer.json();
  const dl = document.getElementById("counts");
  dl.replaceChildren();
  const shown = answer.ok ? {
    Database: h.database, "Series receiving": h.series_receiving, "Jobs queued": h.jobs_queued,
    "Jobs running": h.jobs_running, "Queue depth": h.queue_depth, "Processing workers": h.processing_workers,
    "Failed deliveries": h.deliveries_failed, "Associations (24 h)": h.associations_today,
  } : { Database: h.detail };
  for (const [name, value] of Object.entries(shown)) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dl.append(dt, dd);
  }
  const body = document.querySelector("#receivers tbody");
  body.replaceChildren();
  for (const r of h.receivers || []) {
    const tr = addRow(body, {
      instance: r.instance_id, host: r.host, started: when(r.started), heartbeat: `${r.heartbeat_age.toFixed(0)} s ago`,
    });
    tr.dataset.stale = r.heartbeat_age > 60 ? "1" : "0";
  }
  document.getElementById("health").dataset.ready = "1";
}

load();
setInterval(load, 5000);
