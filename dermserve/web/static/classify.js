// The classify view: each dropped or chosen image is checked against the size limit, sent to
// /api/analyze, and shown as a result card. No image leaves this page for anywhere else.
"use strict";

const DEFAULT_LIMIT_BYTES = 10 * 1024 * 1024;
let limitBytes = DEFAULT_LIMIT_BYTES;
// The CLI's levels (dermserve/cli/reading.py says why; a test keeps these copies equal to them).
const LOW_CONFIDENCE_CUE = 0.60;  // top probability under which a result is flagged
const BORDERLINE_MARGIN = 0.02;  // probability either side of the melanoma threshold
const OVERLAY_MAX_ALPHA = 0.6;  // dermserve/core/explanation.py: opacity where the heatmap is 1
const COLOUR_STOPS = [[0, 0, 143], [0, 128, 255], [64, 255, 128], [255, 224, 0], [200, 0, 0]];
const LARGEST_SIDE = 1024;  // pixels of the drawn picture's longer side (the card shows less)

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
  const cue = node.querySelector(".cue");
  const top = result.probabilities[0];
  if (result.abstained) {
    node.classList.add("abstained");
    state.textContent = "Needs review: " + result.abstention_text + " Do not act on the most " +
      "probable class (" + top.display_name + ", " + percent(top.probability) + ").";
  } else {
    state.textContent = "Result: " + top.display_name + " (" + top.label + "), " +
      percent(top.probability) + ".";
    if (top.probability < LOW_CONFIDENCE_CUE) {
      const second = result.probabilities[1];
      cue.textContent = "Low confidence: the top probability " + percent(top.probability) +
        " is under " + percent(LOW_CONFIDENCE_CUE) + (second ? "; " + second.display_name +
        " has " + percent(second.probability) : "") + ". Read it as uncertain.";
      cue.hidden = false;
    }
  }
  // Out-of-distribution wins over low confidence (dermserve/core/prediction.py), so any other answer
  // means the score is within the version's threshold.
  const unlike = result.abstention_reason === "ABSTENTION_REASON_OUT_OF_DISTRIBUTION";
  node.querySelector(".ood").textContent = "Out-of-distribution score " +
    Number(result.ood_score).toFixed(1) + ": " + (unlike ? "unlike the training images " +
    "(above the version's threshold)." : "typical of the training images (within the " +
    "version's threshold).");
}

function showOperatingPoint(node, point) {
  const text = node.querySelector(".operating-point");
  if (!point) {
    text.textContent = "This model version records no melanoma operating point.";
    return;
  }
  const side = point.above ? "at or above" : "below";
  let line = "Melanoma operating point: probability " + point.probability.toFixed(3) + " is " +
    side + " the threshold " + point.threshold.toFixed(3);
  if (Math.abs(point.probability - point.threshold) <= BORDERLINE_MARGIN) {
    line += " (borderline: within " + BORDERLINE_MARGIN.toFixed(2) + ")";
    node.classList.add("borderline");
  }
  line += ".";
  if (point.sensitivity !== null && point.sensitivity !== undefined) {
    line += " At this threshold the held-out test sensitivity was " + percent(point.sensitivity) +
      " and the specificity " + percent(point.specificity) + ".";
  }
  text.textContent = line;
}

function colour(value) {
  const position = Math.min(Math.max(value, 0), 1) * (COLOUR_STOPS.length - 1);
  const low = Math.min(Math.floor(position), COLOUR_STOPS.length - 2);
  const share = position - low;
  return COLOUR_STOPS[low].map((c, i) => c + share * (COLOUR_STOPS[low + 1][i] - c));
}

function heatCanvas(explanation) {
  // One pixel per heatmap cell, coloured as the server's overlay and as transparent as the
  // heat is cold; the browser's smoothing upsamples it over the picture.
  const small = document.createElement("canvas");
  small.width = explanation.width;
  small.height = explanation.height;
  const context = small.getContext("2d");
  const pixels = context.createImageData(small.width, small.height);
  explanation.values.forEach((value, index) => {
    const [r, g, b] = colour(value);
    pixels.data.set([r, g, b, 255 * OVERLAY_MAX_ALPHA * Math.min(Math.max(value, 0), 1)],
      4 * index);
  });
  context.putImageData(pixels, 0, 0);
  return small;
}

async function drawnOverlay(file, explanation) {
  // The heatmap over the uploaded image at its own proportions: the model saw the whole frame
  // resized to its square input (dermserve/core/preprocessing.py), so the map stretches back the same way.
  const picture = await createImageBitmap(file);
  const scale = Math.min(1, LARGEST_SIDE / Math.max(picture.width, picture.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(picture.width * scale);
  canvas.height = Math.round(picture.height * scale);
  const context = canvas.getContext("2d");
  context.drawImage(picture, 0, 0, canvas.width, canvas.height);
  context.imageSmoothingEnabled = true;
  context.drawImage(heatCanvas(explanation), 0, 0, canvas.width, canvas.height);
  return canvas.toDataURL("image/png");
}

async function showPicture(node, explanation, file, labels) {
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
  const name = labels[explanation.explained_label] || explanation.explained_label;
  let overlay;
  let overlayAlt = "Heatmap of where the model saw " + name + ", over the uploaded image";
  try {
    overlay = await drawnOverlay(file, explanation);
    note.textContent = "Heatmap over the uploaded image, at its own proportions: the regions " +
      "that most raised the score of " + name + ".";
  } catch (err) {  // a DICOM file, which the browser cannot draw: the server's square overlay
    overlay = "data:image/png;base64," + explanation.overlay_png_base64;
    overlayAlt = "Heatmap of where the model saw " + name + ", over the image as the model saw " +
      "it (resized to its square input)";
    note.textContent = "Heatmap over the image as the model saw it (resized to its square " +
      "input and colour-normalised): the regions that most raised the score of " + name + ".";
  }
  const show = () => {
    img.src = toggle.checked ? overlay : original;
    img.alt = toggle.checked ? overlayAlt : "The uploaded image, without the heatmap";
  };
  toggle.addEventListener("change", show);
  show();
}

async function showResult(node, answer, file) {
  const result = answer.classification;
  const labels = {};
  for (const item of result.probabilities) labels[item.label] = item.display_name;
  showState(node, result);
  showBars(node, result.probabilities);
  showOperatingPoint(node, answer.operating_point);
  await showPicture(node, answer.explanation, file, labels);
  const link = node.querySelector(".model-link");
  link.href = "/model?version=" + encodeURIComponent(result.model.version);
  link.textContent = "Model " + result.model.name + " version " + result.model.version +
    ": model card";
  let reference = "Request id " + result.request_id;
  if (result.dicom) {  // the DICOM study the result belongs to (no patient data comes back)
    reference += "; DICOM study " + result.dicom.study_instance_uid + ", instance " +
      result.dicom.sop_instance_uid;
  }
  reference += result.context_used ? "; the patient context was used" :
    (Object.keys(contextHeaders()).length ? "; this version does not use the patient context" : "");
  node.querySelector(".request").textContent = reference;
  node.querySelector(".body").hidden = false;
}

function contextHeaders() {
  // The form's patient context, in headers (never in the URL, which logs keep); empty: unknown.
  const headers = {};
  const fields = { "X-Dermserve-Age": "context-age", "X-Dermserve-Sex": "context-sex",
    "X-Dermserve-Site": "context-site" };
  for (const [header, id] of Object.entries(fields)) {
    const value = document.getElementById(id).value.trim();
    if (value) headers[header] = value;
  }
  return headers;
}

async function analyze(file) {
  // "classified", "abstained" or "rejected", for the status line.
  const node = card(file.name);
  try {
    if (file.size > limitBytes) {
      reject(node, { reason: "IMAGE_TOO_LARGE", message: "the image is " + file.size +
        " bytes, larger than the limit of " + limitBytes + " bytes; it was not uploaded" });
      return "rejected";
    }
    const response = await fetch("/api/analyze", {
      // X-Dermserve-Page: the server refuses a POST without it (a cross-site form cannot send it).
      method: "POST", body: file,
      headers: Object.assign({ "Content-Type": "application/octet-stream",
        "X-Dermserve-Page": "1" }, contextHeaders()),
    });
    const answer = await response.json();
    if (!response.ok) {
      reject(node, answer.error);
      return "rejected";
    }
    await showResult(node, answer, file);
    return answer.classification.abstained ? "abstained" : "classified";
  } catch (err) {
    reject(node, { code: "NETWORK", message: "the server could not be reached (" + err + ")" });
    return "rejected";
  } finally {
    node.setAttribute("aria-busy", "false");
  }
}

function statusLine(outcomes) {
  const count = (what) => outcomes.filter((outcome) => outcome === what).length;
  return "Done: " + count("classified") + " classified, " + count("abstained") +
    " need review (abstained), " + count("rejected") + " rejected.";
}

async function analyzeAll(files) {
  const status = document.getElementById("status");
  status.textContent = "Classifying " + files.length + " image(s)…";
  status.textContent = statusLine(await Promise.all(files.map(analyze)));
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
