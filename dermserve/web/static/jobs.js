// The batch jobs view: lists the page identity's jobs (ListBatchJobs, through /api/jobs), and
// follows the jobs whose ids this tab remembers (sessionStorage: a job id may name a patient, and
// a shared workstation's next user must not find it); shows their progress and links each to its
// results as a JSON Lines download.
"use strict";

const STORE_KEY = "dermserve.jobs";
const REFRESH_MS = 5000;
const TERMINAL = ["BATCH_JOB_STATE_SUCCEEDED", "BATCH_JOB_STATE_FAILED",
  "BATCH_JOB_STATE_CANCELLED"];

// Earlier versions kept the ids in localStorage, where they outlived the session: drop them.
localStorage.removeItem(STORE_KEY);

function followed() {
  try {
    return JSON.parse(sessionStorage.getItem(STORE_KEY) || "[]");
  } catch (err) {
    return [];
  }
}

function remember(ids) {
  sessionStorage.setItem(STORE_KEY, JSON.stringify(ids));
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

function linkCell(id, name) {
  const td = document.createElement("td");
  const link = document.createElement("a");
  link.href = "/api/jobs/" + encodeURIComponent(id) + "/results";
  link.textContent = "Download results of " + name + " (JSON Lines)";
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

// A job's cells, named `name` (what the user typed, or the job's own name in the list) and
// linked by `id`, then `last` (the remove button, or when the job was submitted).
function jobRow(name, id, job, last) {
  const tr = document.createElement("tr");
  const model = job.model && job.model.version !== "0" ?
    job.model.name + " v" + job.model.version : "not yet";
  tr.append(cell(name), cell(job.state.replace("BATCH_JOB_STATE_", "").toLowerCase()),
    progressCell(name, job), cell(String(job.failed_images)), cell(String(job.abstained_images)),
    cell(model), linkCell(id, name), last);
  return tr;
}

function row(id, job, error) {
  if (!error) return jobRow(id, id, job, removeCell(id));
  const tr = document.createElement("tr");
  tr.append(cell(id), cell("Cannot show the job: " + error.message + " (reason " +
    (error.reason || error.code) + ")"),
  cell(""), cell(""), cell(""), cell(""), cell(""), removeCell(id));
  return tr;
}

function submitted(job) {
  return cell(job.create_time ? new Date(job.create_time).toLocaleString() : "");
}

// The listed jobs: `pages` pages of them are shown; each refresh reads them again from the first.
let pages = 1;
let listTimer = null;

async function fetchPage(token) {
  const response = await fetch("/api/jobs?page_token=" + encodeURIComponent(token));
  const answer = await response.json();
  if (!response.ok) throw answer.error;
  return answer;
}

async function refreshList() {
  const status = document.getElementById("my-jobs-status");
  const older = document.getElementById("older-jobs");
  let jobs = [];
  let token = "";
  try {
    for (let i = 0; i < pages; i++) {
      const page = await fetchPage(token);
      jobs = jobs.concat(page.jobs);
      token = page.next_page_token;
      if (!token) break;
    }
  } catch (error) {
    status.textContent = "Cannot list the jobs: " + error.message + " (reason " +
      (error.reason || error.code) + ")";
    return;
  }
  document.querySelector("#my-jobs tbody").replaceChildren(...jobs.map((job) =>
    jobRow(job.client_job_id || job.job_id, job.job_id, job, submitted(job))));
  older.hidden = !token;
  status.textContent = jobs.length + " job(s) listed" + (token ? "; older ones follow." : ".");
  clearTimeout(listTimer);
  if (jobs.some((job) => !TERMINAL.includes(job.state))) {
    listTimer = setTimeout(refreshList, REFRESH_MS);
  }
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
  document.getElementById("older-jobs").addEventListener("click", () => {
    pages += 1;
    refreshList();
  });
  refreshList();
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
