// The classify view: each dropped or chosen image is checked against the size limit, sent to
// /api/analyze, and shown as a result card. No image leaves this page for anywhere else.
"use strict";

const DEFAULT_LIMIT_BYTES = 10 * 1024 * 1024;
let limitBytes = DEFAULT_LIMIT_BYTES;

function percent(p) {
  return (100 * p).toFixed(1) + "%";
}

function card(name) {
  const node = document.getElementById("result-template").content.firstElementChild
    .cloneNode(true);
  node.querySelector(".file-name").textContent = name;
  node.querySelector(".state").textContent = "Classifying…";
  document.getElementById("results").append(node);
  return node;
}

function reject(node, error) {
  node.classList.add("rejected");
  node.querySelector(".state").textContent =
    "Rejected: " + error.message + " (reason " + (error.reason || error.code) + ")";
}

function showBars(node, probabilities) {
  const list = node.querySelector(".bars");
  for (const item of probabilities) {
    const row = document.createElement("li");
    const name = document.createElement("span");
    name.className = "bar-label";
    name.textContent = item.display_name + " (" + item.label + ")";
    const meter = document.createElement("meter");
    meter.min = 0;
    meter.max = 1;
    meter.value = item.probability;
    meter.setAttribute("aria-label", item.display_name + " probability");
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = percent(item.probability);
    row.append(name, meter, value);
    list.append(row);
  }
}

function showState(node, result) {
  const state = node.querySelector(".state");
  if (result.abstained) {
    node.classList.add("abstained");
    state.textContent = "Abstained, needs human review. " + result.abstention_text;
    return;
  }
  const top = result.probabilities[0];
  state.textContent = "Not abstained. Most probable: " + top.display_name + " (" +
    percent(top.probability) + ").";
}

function showOperatingPoint(node, point) {
  const text = node.querySelector(".operating-point");
  if (!point) {
    text.textContent = "This model version records no melanoma operating point.";
    return;
  }
  const side = point.above ? "at or above" : "below";
  let line = "Melanoma operating point: probability " + point.probability.toFixed(3) + " is " +
    side + " the threshold " + point.threshold.toFixed(3) + ".";
  if (point.sensitivity !== null && point.sensitivity !== undefined) {
    line += " At this threshold the held-out test sensitivity was " + percent(point.sensitivity) +
      " and the specificity " + percent(point.specificity) + ".";
  }
  text.textContent = line;
}

function showPicture(node, explanation, file, labels) {
  const img = node.querySelector(".overlay");
  const toggle = node.querySelector(".heatmap-toggle");
  const note = node.querySelector(".explain-note");
  const original = URL.createObjectURL(file);
  if (!explanation.available) {
    img.src = original;
    img.alt = "The uploaded image";
    note.textContent = explanation.message;
    toggle.disabled = true;
    toggle.checked = false;
    return;
  }
  const overlay = "data:image/png;base64," + explanation.overlay_png_base64;
  const name = labels[explanation.explained_label] || explanation.explained_label;
  const overlayAlt = "Heatmap of where the model saw " + name + ", over the image as the model saw it";
  note.textContent = "Heatmap: the regions that most raised the score of " + name + ".";
  const show = () => {
    img.src = toggle.checked ? overlay : original;
    img.alt = toggle.checked ? overlayAlt : "The uploaded image, without the heatmap";
  };
  toggle.addEventListener("change", show);
  show();
}

function showResult(node, answer, file) {
  const result = answer.classification;
  const labels = {};
  for (const item of result.probabilities) labels[item.label] = item.display_name;
  showState(node, result);
  showBars(node, result.probabilities);
  showOperatingPoint(node, answer.operating_point);
  showPicture(node, answer.explanation, file, labels);
  const link = node.querySelector(".model-link");
  link.href = "/model?version=" + encodeURIComponent(result.model.version);
  link.textContent = "Model " + result.model.name + " version " + result.model.version +
    ": model card";
  let reference = "Request id " + result.request_id;
  if (result.dicom) {  // the DICOM study the result belongs to (no patient data comes back)
    reference += "; DICOM study " + result.dicom.study_instance_uid + ", instance " +
      result.dicom.sop_instance_uid;
  }
  node.querySelector(".request").textContent = reference;
  node.querySelector(".body").hidden = false;
}

async function analyze(file) {
  const node = card(file.name);
  try {
    if (file.size > limitBytes) {
      reject(node, { reason: "IMAGE_TOO_LARGE", message: "the image is " + file.size +
        " bytes, larger than the limit of " + limitBytes + " bytes; it was not uploaded" });
      return;
    }
    const response = await fetch("/api/analyze", {
      // X-Dermserve-Page: the server refuses a POST without it (a cross-site form cannot send it).
      method: "POST", body: file,
      headers: { "Content-Type": "application/octet-stream", "X-Dermserve-Page": "1" },
    });
    const answer = await response.json();
    if (!response.ok) {
      reject(node, answer.error);
      return;
    }
    showResult(node, answer, file);
  } catch (err) {
    reject(node, { code: "NETWORK", message: "the server could not be reached (" + err + ")" });
  } finally {
    node.setAttribute("aria-busy", "false");
  }
}

async function analyzeAll(files) {
  const status = document.getElementById("status");
  status.textContent = "Classifying " + files.length + " image(s)…";
  await Promise.all(files.map(analyze));
  status.textContent = "Done: " + files.length + " image(s).";
}

async function loadConfig() {
  try {
    const response = await fetch("/api/config");
    const config = await response.json();
    limitBytes = config.max_image_bytes;
    document.getElementById("limit").textContent = "At most " +
      (limitBytes / 1048576).toFixed(1) + " MiB per image. Images are sent to the " +
      "classifier and kept nowhere.";
  } catch (err) {
    limitBytes = DEFAULT_LIMIT_BYTES;
  }
}

function setUp() {
  const input = document.getElementById("files");
  const zone = document.getElementById("dropzone");
  input.addEventListener("change", () => {
    const files = Array.from(input.files);  // the list empties when the input is reset
    input.value = "";
    analyzeAll(files);
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    analyzeAll(Array.from(event.dataTransfer.files));
  });
  loadConfig();
}

setUp();
