// The batch jobs view: follows the jobs whose ids this browser remembers (localStorage), shows
// their progress, and links each to its results as a JSON Lines download.
"use strict";

const STORE_KEY = "dermserve.jobs";
const REFRESH_MS = 5000;
const TERMINAL = ["BATCH_JOB_STATE_SUCCEEDED", "BATCH_JOB_STATE_FAILED",
  "BATCH_JOB_STATE_CANCELLED"];

function followed() {
  try {
    return JSON.parse(localStorage.getItem(STORE_KEY) || "[]");
  } catch (err) {
    return [];
  }
}

function remember(ids) {
  localStorage.setItem(STORE_KEY, JSON.stringify(ids));
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function progressCell(id, job) {
  const td = document.createElement("td");
  const bar = document.createElement("progress");
  const total = Number(job.total_images || 0);
  const done = Number(job.done_images || 0);
  bar.max = Math.max(total, 1);
  bar.value = done;
  bar.setAttribute("aria-label", "Progress of job " + id);
  td.append(bar, " " + done + " / " + total);
  return td;
}

function linkCell(id) {
  const td = document.createElement("td");
  const link = document.createElement("a");
  link.href = "/api/jobs/" + encodeURIComponent(id) + "/results";
  link.textContent = "Download results of " + id + " (JSON Lines)";
  link.setAttribute("download", "");
  td.append(link);
  return td;
}

function removeCell(id) {
  const td = document.createElement("td");
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = "Remove " + id;
  button.addEventListener("click", () => {
    remember(followed().filter((other) => other !== id));
    refresh();
  });
  td.append(button);
  return td;
}

function row(id, job, error) {
  const tr = document.createElement("tr");
  if (error) {
    tr.append(cell(id), cell("Cannot show the job: " + error.message + " (reason " +
      (error.reason || error.code) + ")"),
      cell(""), cell(""), cell(""), cell(""), cell(""), removeCell(id));
    return tr;
  }
  const model = job.model && job.model.version !== "0" ?
    job.model.name + " v" + job.model.version : "not yet";
  tr.append(cell(id), cell(job.state.replace("BATCH_JOB_STATE_", "").toLowerCase()),
    progressCell(id, job), cell(String(job.failed_images)), cell(String(job.abstained_images)),
    cell(model), linkCell(id), removeCell(id));
  return tr;
}

async function fetchJob(id) {
  const response = await fetch("/api/jobs/" + encodeURIComponent(id));
  const answer = await response.json();
  return response.ok ? { job: answer } : { error: answer.error };
}

let timer = null;

async function refresh() {
  const ids = followed();
  const answers = await Promise.all(ids.map(fetchJob));
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren(...ids.map((id, i) => row(id, answers[i].job, answers[i].error)));
  const running = answers.some((a) => a.job && !TERMINAL.includes(a.job.state));
  clearTimeout(timer);
  if (running) timer = setTimeout(refresh, REFRESH_MS);
  document.getElementById("status").textContent = ids.length + " job(s) followed.";
}

function setUp() {
  const form = document.getElementById("add-job");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("job-id");
    const id = input.value.trim();
    if (id && !followed().includes(id)) remember([...followed(), id]);
    input.value = "";
    refresh();
  });
  refresh();
}

setUp();
