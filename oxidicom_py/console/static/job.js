// One job: its facts, log excerpt, outputs, deliveries and history from /api/jobs/{id}, read
// again when /api/events says the job changed; retry / cancel, and retry of failed deliveries.
"use strict";

const id = main.dataset.job;
const SOP_CLASSES = {
  "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
  "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
  "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
  "1.2.840.10008.5.1.4.1.1.4": "MR Image",
  "1.2.840.10008.5.1.4.1.1.2": "CT Image",
  "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
};

function facts(job) {
  const dl = document.getElementById("facts");
  dl.replaceChildren();
  const shown = {
    Rule: job.rule, Level: job.level, PACS: job.pacs, Study: job.study_uid, Series: job.series_uids.join(", "),
    Attempts: `${job.attempts} / ${job.max_attempts}`, Created: when(job.created_at), Started: when(job.started_at),
    Finished: when(job.finished_at), Duration: job.duration == null ? "" : `${job.duration.toFixed(1)} s`,
    Worker: job.worker, "Exit code": job.exit_code, "Last error": job.last_error, Reason: job.reason,
  };
  for (const [name, value] of Object.entries(shown)) {
    if (value == null || value === "") continue;
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dd.dataset.fact = name.toLowerCase().replace(" ", "-");
    dl.append(dt, dd);
  }
}

function show(job) {
  const section = document.getElementById("job");
  section.dataset.state = job.state;
  document.getElementById("state").textContent = job.state;
  document.getElementById("state").dataset.state = job.state;
  facts(job);
  const buttons = document.getElementById("actions");
  buttons.replaceChildren();
  jobButtons(buttons, job, load);
  document.getElementById("log").textContent = job.log_excerpt || "(no log)";
  const outputs = document.querySelector("#outputs tbody");
  outputs.replaceChildren();
  for (const o of job.outputs) {
    if (typeof o !== "object" || o === null) addRow(outputs, { file: String(o), sop_class: "", series: "" });
    else addRow(outputs, { file: o.path, sop_class: SOP_CLASSES[o.SOPClassUID] || o.SOPClassUID, series: o.SeriesInstanceUID });
  }
  const deliveries = document.querySelector("#deliveries tbody");
  deliveries.replaceChildren();
  for (const d of job.deliveries) {
    const tr = addRow(deliveries, {
      id: d.id, destination: d.destination, instance: d.sop_instance_uid, state: d.state,
      attempts: `${d.attempts} / ${d.max_attempts}`, error: d.last_error, actions: "",
    });
    tr.dataset.state = d.state;
    if (d.state === "failed") actionButton(tr.querySelector("td.actions"), "retry", `/api/deliveries/${d.id}/retry`, load);
  }
  const history = document.querySelector("#history tbody");
  history.replaceChildren();
  for (const h of job.history) addRow(history, { at: when(h.at || h.time), attempt: h.attempt, state: h.state, error: h.error });
  section.dataset.ready = "1";
}

async function load() {
  const answer = await fetch(`/api/jobs/${id}`);
  if (answer.ok) show(await answer.json());
  else message.textContent = `job ${id}: ${(await answer.json()).detail}`;
}

liveEvents().addEventListener("job", (e) => { if (String(JSON.parse(e.data).id) === id) load(); });
load();
