// medvill web demo: plain JavaScript, no build step.  Every text from the server goes into
// the page through textContent (never innerHTML).
"use strict";

const state = {
  info: null,        // GET /api/info
  id: null,          // the current upload
  report: null,      // its generated report
  words: [],         // words of the report (POST /api/explain)
  selected: null,    // index of the clicked word
  preview: null,     // data URL of the image as the model sees it
};

const $ = (id) => document.getElementById(id);
const panel = (task) => document.querySelector(`section[data-task="${task}"]`);
const status = (task, text) => { panel(task).querySelector(".status").textContent = text || ""; };
const available = (task) => state.info && state.info.tasks[task] && state.info.tasks[task].available;
const mb = (bytes) => (bytes / (1024 * 1024)).toFixed(1);
const sentence = (text) => (/[.!?]$/.test(text) ? text : `${text}.`);

function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = false;
}

function clearMessage() {
  $("message").hidden = true;
  $("message").textContent = "";
}

// fetch + JSON; a non-2xx answer becomes an Error carrying the server's message
async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  return request(path, options);
}

async function request(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error(`the server cannot be reached (${err.message})`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    data = null;
  }
  if (!response.ok) {
    throw new Error((data && data.error) || `the server answered ${response.status} ${response.statusText}`);
  }
  return data;
}

// ---------------------------------------------------------------- start-up
async function start() {
  try {
    state.info = await api("/api/info");
  } catch (err) {
    showMessage(`Cannot load the demo: ${err.message}`);
    return;
  }
  const info = state.info;
  $("limit").textContent = `${mb(info.max_upload_bytes)} MB`;
  const weights = info.weights && info.weights !== "fp32" ? `, ${info.weights} weights` : "";
  $("checkpoint").textContent = `Checkpoints: ${info.checkpoint} (${info.device}${weights}).`;
  for (const [task, t] of Object.entries(info.tasks)) {
    const note = panel(task).querySelector(".note");
    if (t.note) {
      note.textContent = t.note;
      note.hidden = false;
    }
    if (!t.available) panel(task).classList.add("missing");
  }
  if (info.pool) $("pool-source").textContent = `Pool: ${info.pool.source}.`;
  const select = $("explain-task");
  for (const task of info.explain_tasks) select.add(new Option(task, task));
  $("file").addEventListener("change", () => { if ($("file").files.length) upload($("file").files[0]); });
  const zone = $("dropzone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
  $("question-form").addEventListener("submit", (e) => { e.preventDefault(); ask(); });
  $("reclassify").addEventListener("click", () => classify(state.id, $("report-input").value));
  $("explain-task").addEventListener("change", () => explain(state.id));
  $("layer").addEventListener("change", () => { if (state.selected !== null) showOverlay(state.selected); });
  $("show-image").addEventListener("click", showPreview);
}

// ---------------------------------------------------------------- upload
async function upload(file) {
  clearMessage();
  const keep = state.id ? " The results of the previous image are still shown." : "";
  const limit = state.info.max_upload_bytes;
  if (file.size > limit) {
    showMessage(`${file.name} is ${mb(file.size)} MB; the limit is ${mb(limit)} MB (medvill serve --max-upload-mb).${keep}`);
    return;
  }
  if (file.size === 0) {
    showMessage(`${file.name} is empty.${keep}`);
    return;
  }
  $("image-status").textContent = `Reading ${file.name}…`;
  let data;
  try {
    data = await request("/api/upload", {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(file.name) },
      body: file,
    });
  } catch (err) {
    $("image-status").textContent = "";
    showMessage(`Not accepted: ${sentence(err.message)}${keep}`);
    return;
  } finally {
    $("file").value = "";
  }
  state.id = data.id;
  state.report = null;
  state.words = [];
  state.selected = null;
  state.preview = data.preview;
  $("image-status").textContent = "";
  showPreview();
  $("image-caption").textContent =
    `${data.name}: ${data.width} x ${data.height} px (${data.kind}); shown as the model sees it.`;
  const notes = $("image-notes");
  notes.replaceChildren(...data.notes.map((n) => { const li = document.createElement("li"); li.textContent = n; return li; }));
  $("answer").replaceChildren();
  runAll(data.id);
}

function runAll(id) {
  if (available("classification")) classify(id, "");
  if (available("generation")) generate(id);
  if (available("retrieval") && state.info.pool) similar(id);
  if (available("vqa")) {
    $("question").disabled = false;
    $("ask").disabled = false;
  }
}

function showPreview() {
  if (!state.preview) return;
  $("figure").hidden = false;
  $("image").src = state.preview;
  $("image").alt = "the X-ray as the model sees it";
  for (const w of document.querySelectorAll("#report .word.selected")) w.classList.remove("selected");
  state.selected = null;
  $("image-caption").dataset.overlay = "";
}

// ---------------------------------------------------------------- classification
async function classify(id, report) {
  status("classification", report ? "Classifying with the report…" : "Classifying…");
  let data;
  try {
    data = await api("/api/classify", { id, report: report || null });
  } catch (err) {
    if (id === state.id) { status("classification", ""); showMessage(`Classification: ${err.message}`); }
    return;
  }
  if (id !== state.id) return;
  status("classification", "");
  $("classification-basis").textContent = data.with_report
    ? "From the image and the report you gave."
    : "From the image alone: the model was fine-tuned on image + report, so these are less reliable than with the report (below).";
  const rows = data.probabilities.slice().sort((a, b) => b.probability - a.probability).map((p) => {
    const tr = document.createElement("tr");
    const name = document.createElement("td");
    name.textContent = p.name;
    const value = document.createElement("td");
    value.textContent = p.probability.toFixed(3);
    value.className = "num";
    const barCell = document.createElement("td");
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * p.probability).toFixed(1)}%`;
    barCell.append(bar);
    if (p.probability >= 0.5) tr.className = "high";
    tr.append(name, value, barCell);
    return tr;
  });
  $("probabilities").tBodies[0].replaceChildren(...rows);
  $("probabilities").hidden = false;
  $("with-report").hidden = false;
}

// ---------------------------------------------------------------- report + attention
async function generate(id) {
  status("generation", "Writing the report…");
  $("report").replaceChildren();
  $("report-hint").hidden = true;
  let data;
  try {
    data = await api("/api/generate", { id });
  } catch (err) {
    if (id === state.id) { status("generation", ""); showMessage(`Report generation: ${err.message}`); }
    return;
  }
  if (id !== state.id) return;
  status("generation", "");
  state.report = data.report;
  $("report").textContent = data.report || "(the model wrote an empty report)";
  if (data.report && state.info.explain_tasks.length) explain(id);
}

async function explain(id) {
  if (!state.report || id !== state.id) return;
  const task = $("explain-task").value || null;
  let data;
  try {
    data = await api("/api/explain", { id, text: state.report, task });
  } catch (err) {
    if (id === state.id) showMessage(`Attention: ${err.message}`);
    return;
  }
  if (id !== state.id) return;
  state.words = data.words;
  const layer = $("layer");
  const keep = layer.value;
  layer.replaceChildren(new Option("mean of layers", "mean"));
  for (let l = 0; l < data.num_layers; l++) layer.add(new Option(`layer ${l + 1} of ${data.num_layers}`, String(l)));
  layer.value = [...layer.options].some((o) => o.value === keep) ? keep : String(data.num_layers - 1);
  const parts = [];
  data.words.forEach((w, i) => {
    if (i > 0 && !/^[.,;:!?)]/.test(w.text)) parts.push(document.createTextNode(" "));
    if (w.clickable) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "word";
      b.textContent = w.text;
      b.dataset.index = String(i);
      b.addEventListener("click", () => showOverlay(i));
      parts.push(b);
    } else {
      parts.push(document.createTextNode(w.text));
    }
  });
  $("report").replaceChildren(...parts);
  const clickable = data.words.some((w) => w.clickable);
  $("report-hint").textContent = clickable
    ? "Click a word to see where the model looks on the image."
    : "The report has no words to show the attention of.";
  $("report-hint").hidden = false;
  $("attention-controls").hidden = !clickable;
  if (state.selected !== null && state.selected < data.words.length) showOverlay(state.selected);
}

async function showOverlay(index) {
  const id = state.id;
  const layer = $("layer").value;
  state.selected = index;
  for (const w of document.querySelectorAll("#report .word")) {
    w.classList.toggle("selected", w.dataset.index === String(index));
  }
  let data;
  try {
    data = await api("/api/overlay", {
      id, text: state.report, word: index, layer: layer === "mean" ? null : Number(layer),
      task: $("explain-task").value || null,
    });
  } catch (err) {
    if (id === state.id) showMessage(`Attention: ${err.message}`);
    return;
  }
  if (id !== state.id || state.selected !== index) return;
  $("image").src = data.image;
  $("image").alt = data.caption;
  $("image-caption").textContent = data.caption;
  $("image-caption").dataset.overlay = data.word;
}

// ---------------------------------------------------------------- question answering
async function ask() {
  const id = state.id;
  const question = $("question").value.trim();
  if (!id) { showMessage("Upload an image first."); return; }
  if (!question) { showMessage("Type a question first."); return; }
  clearMessage();
  status("vqa", "Thinking…");
  let data;
  try {
    data = await api("/api/answer", { id, question });
  } catch (err) {
    if (id === state.id) { status("vqa", ""); showMessage(`Question: ${err.message}`); }
    return;
  }
  if (id !== state.id) return;
  status("vqa", "");
  const head = document.createElement("p");
  head.className = "answer";
  const q = document.createElement("span");
  q.className = "muted";
  q.textContent = `${data.question} `;
  const a = document.createElement("strong");
  a.textContent = data.answer;
  head.append(q, a, document.createTextNode(` (probability ${data.probability.toFixed(3)})`));
  const others = document.createElement("p");
  others.className = "muted";
  others.textContent = "Top answers: " + data.top.map((t) => `${t.answer} ${t.probability.toFixed(3)}`).join(", ");
  $("answer").replaceChildren(head, others);
}

// ---------------------------------------------------------------- retrieval
async function similar(id) {
  status("retrieval", "Ranking the pool…");
  $("similar").replaceChildren();
  let data;
  try {
    data = await api("/api/similar", { id, k: 5 });
  } catch (err) {
    if (id === state.id) { status("retrieval", ""); showMessage(`Similar reports: ${err.message}`); }
    return;
  }
  if (id !== state.id) return;
  const probs = data.hits.map((h) => h.probability);
  status("retrieval", data.hits.length > 1 && Math.max(...probs) - Math.min(...probs) < 1e-4
    ? "The model scores these reports alike (an undertrained matching head?): their order is the pool's order."
    : "");
  $("similar").replaceChildren(...data.hits.map((h) => {
    const li = document.createElement("li");
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `match probability ${h.probability.toFixed(4)} · findings: ${h.findings.join(", ") || "none"}`;
    const text = document.createElement("div");
    text.textContent = h.text;
    li.append(meta, text);
    return li;
  }));
}

document.addEventListener("DOMContentLoaded", start);
