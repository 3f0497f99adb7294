// Tidal playground: talks to the gateway's own API with the key the user types. No libraries, no build.
"use strict";

const $ = (selector) => document.querySelector(selector);
let apiKey = sessionStorage.getItem("tidal-api-key") || "";  // this tab only, never sent elsewhere
let refreshTimer = null;
let models = [];

function headers(extra) {
  return Object.assign({ "Authorization": "Bearer " + apiKey }, extra || {});
}

// The gateway answers errors in OpenAI's shape: {"error": {"message", "type", "code"}}.
async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (e) { /* not JSON */ }
  return "HTTP " + response.status;
}

function explainKeyError(status, message) {
  if (status === 401) {
    return "That API key was not accepted: " + message + " Check it, or ask your administrator for one " +
           "(keys are Secrets labelled tidal.dev/api-key=true).";
  }
  if (status === 403) return "This API key may not use that model: " + message;
  return message;
}

function setStatus(element, text, isError) {
  element.textContent = text;
  element.classList.toggle("error", Boolean(isError));
}

function describeState(m) {
  const t = m.tidal || {};
  switch (t.state) {
    case "ready": return t.ready_replicas + " ready";
    case "waking": return "waking";
    case "scaled_to_zero": return "at zero";
    case "invalid": return "invalid spec";
    default: return t.state || "unknown";
  }
}

function describeDecision(d) {
  if (!d) return "none yet";
  const when = d.time ? new Date(d.time).toLocaleTimeString() : "";
  return d.previousReplicas + " \u2192 " + d.replicas + ": " + d.reason + (when ? " at " + when : "") +
         (d.message ? " (" + d.message + ")" : "");
}

function renderModels() {
  const body = $("#models tbody");
  body.replaceChildren();
  for (const m of models) {
    const t = m.tidal || {};
    const row = document.createElement("tr");
    row.dataset.model = m.id;
    const cells = [
      m.id, t.namespace + "/" + t.name, null,
      (t.ready_replicas ?? 0) + " / " + (t.desired_replicas ?? 0),
      t.queue == null ? "\u2013" : String(t.queue), String(t.held_requests ?? 0), null, null,
    ];
    cells.forEach((text, i) => {
      const cell = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) cell.scope = "row";
      if (i === 2) {
        cell.textContent = describeState(m);
        cell.className = "state state-" + (t.state || "unknown");
      } else if (i === 6) {
        cell.textContent = describeDecision(t.last_decision);
        cell.className = "reason";
      } else if (i === 7) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "small";
        button.textContent = "Show";
        button.setAttribute("aria-label", "Show the last hour of " + m.id);
        button.addEventListener("click", () => showHistory(m.id));
        cell.appendChild(button);
      } else {
        cell.textContent = text;
      }
      row.appendChild(cell);
    });
    body.appendChild(row);
  }
  $("#models").hidden = models.length === 0;
  $("#models-empty").hidden = models.length !== 0;
  if (models.length === 0) $("#models-empty").textContent = "This key may use no model yet.";
}

function fillSelects() {
  for (const id of ["#model-a", "#model-b"]) {
    const select = $(id);
    const keep = select.value;
    const first = id === "#model-b" ? [["", "(no second model)"]] : [];
    select.replaceChildren();
    for (const [value, label] of first.concat(models.map((m) => [m.id, m.id]))) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = label;
      select.appendChild(option);
    }
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  }
}

async function refreshModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) {
    const message = explainKeyError(response.status, await errorMessage(response));
    setStatus($("#key-status"), message, true);
    stopRefreshing();
    models = [];
    renderModels();
    return false;
  }
  models = (await response.json()).data || [];
  renderModels();
  fillSelects();
  return true;
}

function stopRefreshing() {
  if (refreshTimer) clearInterval(refreshTimer);
  refreshTimer = null;
}

async function connect(event) {
  if (event) event.preventDefault();
  apiKey = $("#api-key").value.trim();
  sessionStorage.setItem("tidal-api-key", apiKey);
  stopRefreshing();
  setStatus($("#key-status"), "Connecting\u2026", false);
  if (await refreshModels()) {
    setStatus($("#key-status"), "Connected: this key may use " + models.length + " model(s).", false);
    await refreshBatches();
    refreshTimer = setInterval(() => { refreshModels(); refreshBatches(); }, 2000);
  }
}

// One streamed chat completion into one answer panel.
async function chat(model, panel) {
  const title = panel.querySelector("h3"), text = panel.querySelector(".text"), stats = panel.querySelector(".stats");
  panel.hidden = false;
  title.textContent = model;
  text.textContent = "";
  setStatus(stats, "Waiting for an answer\u2026", false);
  const messages = [];
  const system = $("#system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push({ role: "user", content: $("#prompt").value });
  const started = performance.now();
  let firstToken = null, tokens = 0;
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({
      model, messages, stream: true,
      temperature: Number($("#temperature").value), max_tokens: Number($("#max-tokens").value),
    }),
  });
  if (!response.ok) {
    setStatus(stats, explainKeyError(response.status, await errorMessage(response)), true);
    return;
  }
  const woke = response.headers.get("x-tidal-woke") === "true";
  const held = Number(response.headers.get("x-tidal-held-seconds") || 0);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.startsWith("data:") ? event.slice(5).trim() : "";
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content;
      if (piece) {
        if (firstToken === null) firstToken = performance.now();
        tokens += 1;
        text.textContent += piece;
      }
    }
  }
  const parts = [];
  if (firstToken !== null) parts.push("time to first token " + ((firstToken - started) / 1000).toFixed(2) + " s");
  parts.push(tokens + " chunk(s) streamed");
  if (woke) parts.push("this request woke the model: it waited " + held.toFixed(1) + " s for the cold start");
  else if (held > 0.05) parts.push("held " + held.toFixed(1) + " s for a free replica");
  setStatus(stats, parts.join(" \u00b7 "), false);
  panel.dataset.done = "true";
  panel.dataset.woke = String(woke);
}

async function send(event) {
  event.preventDefault();
  const a = $("#model-a").value, b = $("#model-b").value;
  const button = $("#send");
  button.disabled = true;
  $("#answer-b").hidden = !b;
  for (const panel of [$("#answer-a"), $("#answer-b")]) panel.dataset.done = "false";
  try {
    await Promise.all([chat(a, $("#answer-a")), b ? chat(b, $("#answer-b")) : Promise.resolve()]);
  } catch (err) {
    setStatus($("#answer-a .stats"), "The request failed: " + err, true);
  } finally {
    button.disabled = false;
  }
}

function sparkline(points) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 300 100");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  if (points.length < 2) return svg;
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  const vmax = Math.max(1e-9, ...points.map((p) => p[1]).filter(Number.isFinite));
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.filter((p) => Number.isFinite(p[1]))
    .map((p) => ((p[0] - t0) / Math.max(1, t1 - t0) * 300).toFixed(1) + "," + (96 - p[1] / vmax * 92).toFixed(1))
    .join(" "));
  svg.appendChild(line);
  return svg;
}

const SERIES = { replicas: "Replicas decided", ready: "Replicas ready", queue: "Queue and held requests",
                 latency_p50_s: "Latency p50 (s)" };

async function showHistory(model) {
  $("#history").hidden = false;
  $("#history-heading").textContent = "Last hour of " + model;
  setStatus($("#history-status"), "Reading Prometheus\u2026", false);
  const charts = $("#charts");
  charts.replaceChildren();
  let body;
  try {
    const response = await fetch("/playground/api/history?model=" + encodeURIComponent(model), { headers: headers() });
    if (!response.ok) {
      setStatus($("#history-status"), await errorMessage(response), true);
      return;
    }
    body = await response.json();
  } catch (err) {
    setStatus($("#history-status"), "Could not read the history: " + err, true);
    return;
  }
  for (const [name, label] of Object.entries(SERIES)) {
    const points = (body.series[name] || []).filter((p) => p[1] !== null);
    const figure = document.createElement("figure");
    figure.className = "chart";
    const caption = document.createElement("figcaption");
    const finite = points.map((p) => p[1]).filter(Number.isFinite);
    const last = finite.length ? finite[finite.length - 1] : null;
    const peak = finite.length ? Math.max(...finite) : null;
    caption.textContent = label + (last === null ? ": no data" : ": now " + +last.toFixed(2) + ", peak " + +peak.toFixed(2));
    const svg = sparkline(points);
    svg.setAttribute("aria-label", caption.textContent);
    figure.append(caption, svg);
    charts.appendChild(figure);
  }
  setStatus($("#history-status"), "", false);
}

// ---- batches: /v1/files and /v1/batches with the same key ----------------------------------------------
const FINAL = ["completed", "failed", "expired", "cancelled"];

function describeProgress(b) {
  const c = b.request_counts || {};
  if (b.status === "failed" && b.errors && b.errors.data && b.errors.data.length) {
    const first = b.errors.data[0];
    return "failed validation: " + (first.line ? "line " + first.line + ": " : "") + first.message +
           (b.errors.data.length > 1 ? " (and " + (b.errors.data.length - 1) + " more)" : "");
  }
  if (!c.total) return b.status === "validating" ? "checking the file\u2026" : "";
  const done = (c.completed || 0) + (c.failed || 0);
  return done + " of " + c.total + " done (" + (c.completed || 0) + " completed, " + (c.failed || 0) + " failed)";
}

function downloadLink(fileId, label, name) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "small";
  button.textContent = label;
  button.dataset.file = fileId;
  button.addEventListener("click", () => download(fileId, name));
  return button;
}

// The key travels in a header, so a plain link cannot fetch the file: fetch it, then save it as a blob.
async function download(fileId, name) {
  const response = await fetch("/v1/files/" + encodeURIComponent(fileId) + "/content", { headers: headers() });
  if (!response.ok) {
    setStatus($("#batch-status"), "Could not download " + name + ": " + await errorMessage(response), true);
    return;
  }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = name;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

function renderBatches(batches) {
  const table = $("#batches");
  const body = table.querySelector("tbody");
  body.replaceChildren();
  table.hidden = batches.length === 0;
  for (const b of batches) {
    const row = document.createElement("tr");
    row.dataset.batch = b.id;
    const cells = [b.id, b.status, describeProgress(b), b.model || ""];
    for (const [i, text] of cells.entries()) {
      const cell = document.createElement("td");
      cell.textContent = text;
      if (i === 1) cell.className = "state batch-" + b.status;
      if (i === 2) cell.className = "progress";
      row.appendChild(cell);
    }
    const results = document.createElement("td");
    if (b.output_file_id) results.appendChild(downloadLink(b.output_file_id, "Output", b.id + "_output.jsonl"));
    if (b.error_file_id) results.appendChild(downloadLink(b.error_file_id, "Errors", b.id + "_errors.jsonl"));
    row.appendChild(results);
    body.appendChild(row);
  }
}

async function refreshBatches() {
  const response = await fetch("/v1/batches?limit=20", { headers: headers() });
  if (response.status === 404) {  // this gateway runs no batches (no --batch-storage)
    setStatus($("#batch-status"), "This gateway does not run batches (it was started without batch storage).", false);
    $("#batch-start").disabled = true;
    return;
  }
  if (!response.ok) return;
  renderBatches((await response.json()).data || []);
}

async function startBatch(event) {
  event.preventDefault();
  const file = $("#batch-file").files[0];
  if (!file) return;
  const status = $("#batch-status");
  $("#batch-start").disabled = true;
  try {
    setStatus(status, "Uploading " + file.name + " (" + file.size + " bytes)\u2026", false);
    const form = new FormData();
    form.append("purpose", "batch");
    form.append("file", file, file.name);
    const uploaded = await fetch("/v1/files", { method: "POST", headers: headers(), body: form });
    if (!uploaded.ok) {
      setStatus(status, "The file was refused: " + explainKeyError(uploaded.status, await errorMessage(uploaded)), true);
      return;
    }
    const fileObject = await uploaded.json();
    const created = await fetch("/v1/batches", {
      method: "POST", headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ input_file_id: fileObject.id, endpoint: $("#batch-endpoint").value,
                             completion_window: "24h" }),
    });
    if (!created.ok) {
      setStatus(status, "The batch was refused: " + await errorMessage(created), true);
      return;
    }
    const batch = await created.json();
    setStatus(status, "Started " + batch.id + "; its progress is below.", false);
    await refreshBatches();
  } finally {
    $("#batch-start").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#key-form").addEventListener("submit", connect);
  $("#chat-form").addEventListener("submit", send);
  $("#batch-form").addEventListener("submit", startBatch);
  if (apiKey) {
    $("#api-key").value = apiKey;
    connect();
  }
});
