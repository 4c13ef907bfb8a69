// The model card view: a version's description, classes and recorded metrics (GetModel).
"use strict";

function format(value) {
  if (Array.isArray(value)) return "[" + value.map(format).join(", ") + "]";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(4);
  return String(value);
}

async function load() {
  const version = new URLSearchParams(location.search).get("version") || "";
  const status = document.getElementById("status");
  const response = await fetch("/api/model?version=" + encodeURIComponent(version));
  const answer = await response.json();
  if (!response.ok) {
    status.textContent = "No model card: " + answer.error.message + " (reason " +
      answer.error.reason + ")";
    return;
  }
  document.getElementById("title").textContent =
    "Model card: " + answer.name + " version " + answer.version;
  document.title = "dermserve: " + answer.name + " version " + answer.version;
  document.getElementById("description").textContent = answer.description;
  const classes = document.getElementById("classes");
  answer.labels.forEach((label, i) => {
    const item = document.createElement("li");
    item.textContent = answer.display_names[i] + " (" + label + ")";
    classes.append(item);
  });
  const body = document.querySelector("#metrics tbody");
  for (const [name, value] of Object.entries(answer.metrics)) {
    const tr = document.createElement("tr");
    const key = document.createElement("th");
    key.scope = "row";
    key.textContent = name;
    const td = document.createElement("td");
    td.textContent = format(value);
    tr.append(key, td);
    body.append(tr);
  }
}

load();
