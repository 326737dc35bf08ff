"use strict";
// The Deep Memory page: settings, generation with a live progress bar (SSE), recovery of
// failed runs (Proceed / Delete), training, and a search comparison. Talks only to the
// gateway (/api/...), which authenticates by the session cookie.

const BLOCK_MESSAGES = {
  generating: "Training data is being generated. Wait for it to finish before generating again.",
  generated: "Training data is ready. Train it before generating again.",
  training: "A Deep Memory model is training. Wait for it to finish before generating again.",
  generating_failed: "Generation failed. Proceed to resume it, or delete the run, before generating again.",
  training_failed: "Training failed. Proceed to retry it, or delete the run, before generating again.",
};
// a run that still says "running" after its job ended is being recovered by the server (a
// lease sweep marks it failed); look again now and then instead of re-reading the old job
const STALE_RECHECK_MS = 3000;

const $ = (id) => document.getElementById(id);
let stream = null;
let recheck = null;
// jobs whose terminal event was seen: their streams only replay the past
const finishedJobs = new Set();

async function api(method, path, body) {
  const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (_) {
    return { ok: false, status: 0, data: { detail: "The service cannot be reached. Check your connection and reload." } };
  }
  if (response.status === 401) {
    window.location.assign("/login");
    throw new Error("not logged in");
  }
  let data = {};
  try { data = await response.json(); } catch (_) { /* an empty or non-JSON body */ }
  return { ok: response.ok, status: response.status, data };
}

function notice(text, isError = false) {
  const el = $("notice");
  el.textContent = text || "";
  el.classList.toggle("error", Boolean(isError && text));
}

function show(id, visible) { $(id).hidden = !visible; }

function statusLabel(status) { return status.replaceAll("_", " "); }

const number = (n) => Number(n).toLocaleString("en-US");
const plural = (n, one, many) => `${number(n)} ${n === 1 ? one : many}`;
const dollars = (x) => `$${x < 0.01 ? x.toFixed(4) : x.toFixed(2)}`;

// what a generate would take, from GET /api/deep-memory/estimate
function estimateText(e) {
  if (!e.total_chunks) { return ""; }
  if (!e.chunks_to_generate) {
    return "Every chunk's questions can be reused from your last trained run: no LLM calls needed.";
  }
  const reused = e.reusable_chunks
    ? ` (${plural(e.reusable_chunks, "chunk", "chunks")} reused from your last trained run)` : "";
  const what = `${plural(e.chunks_to_generate, "chunk", "chunks")} to generate${reused}`;
  if (e.generator !== "llm") { return `${what}, with the offline generator: no LLM calls.`; }
  const parts = [`about ${plural(e.expected_calls, "LLM call", "LLM calls")}`,
    `${number(e.prompt_tokens + e.completion_tokens)} tokens`];
  if (e.cost_usd !== null) { parts.push(dollars(e.cost_usd)); }
  let text = `${what}: ${parts.join(", ")}`;
  if (e.minutes_at_rate_limit !== null) {
    const minutes = e.minutes_at_rate_limit;
    text += `; ${minutes < 1 ? "under a minute" : `about ${plural(Math.round(minutes), "minute", "minutes")}`} at the provider's rate limit`;
  }
  return `${text}.`;
}

async function loadEstimate() {
  const regenerate = $("regenerate").checked;
  const r = await api("GET", `/api/deep-memory/estimate${regenerate ? "?regenerate=true" : ""}`);
  const text = r.ok ? estimateText(r.data) : "";
  $("estimate").textContent = text;
  show("estimate", Boolean(text));
  show("regenerate-row", r.ok && (regenerate || r.data.reusable_chunks > 0));
}

// what a run reused and spent at the LLM (the run's fields, or a progress event's)
function usageText(u) {
  const parts = [];
  if (u.reused_chunks) {
    const generated = u.new_chunks !== undefined ? u.new_chunks : u.done - u.reused_chunks;
    parts.push(`${plural(u.reused_chunks, "chunk", "chunks")} reused from your last trained run, ${number(generated)} generated`);
  }
  if (u.llm_calls) {
    let spent = `${plural(u.llm_calls, "LLM call", "LLM calls")}, ${number(u.prompt_tokens)} prompt + ${number(u.completion_tokens)} completion tokens`;
    if (u.cost_usd !== null && u.cost_usd !== undefined) { spent += ` (${dollars(u.cost_usd)})`; }
    parts.push(spent);
  }
  return parts.join(" · ");
}

function showUsage(u) {
  const text = usageText(u);
  $("run-usage").textContent = text;
  show("run-usage", Boolean(text));
}

function renderSettings(s) {
  $("enabled").textContent = s.enabled ? "on" : "off";
  $("last-trained").textContent = s.last_trained_at ? new Date(s.last_trained_at).toLocaleString() : "never";
  $("trained-chunks").textContent = String(s.trained_chunk_count);
  $("total-chunks").textContent = String(s.total_chunks);
  const trained = Boolean(s.last_training_run_id);
  show("enable-row", trained);
  show("search-card", trained);
  const toggle = $("enable-toggle");
  toggle.checked = s.enabled;
  toggle.disabled = !s.can_enable && !s.enabled;
  const reason = s.can_enable ? "" : (s.can_enable_reason || "");
  $("enable-reason").textContent = reason;
  show("enable-reason", Boolean(reason));

  const generate = $("generate");
  generate.disabled = s.has_blocking_run || s.total_chunks === 0;
  let message = "";
  if (s.has_blocking_run) {
    message = BLOCK_MESSAGES[s.blocking_run_status]
      || `A training run is unfinished (${statusLabel(String(s.blocking_run_status))}).`;
  } else if (s.total_chunks === 0) {
    message = "Add documents first: there are no chunks to generate from.";
  }
  $("block-message").textContent = message;
  show("block-message", Boolean(message));
  if (generate.disabled) {
    show("estimate", false);
    show("regenerate-row", false);
  } else {
    loadEstimate();
  }
  if (message) { generate.setAttribute("aria-describedby", "block-message"); }
  else { generate.removeAttribute("aria-describedby"); }
}

function summarizeMetrics(metrics) {
  // the local trainer reports {with_model: {recall@k}, without_model: {...}}; others may
  // report {recall@k: {with_model, without_model}}
  if (!metrics) { return ""; }
  const pairs = [];
  if (metrics.with_model && metrics.without_model) {
    for (const k of Object.keys(metrics.with_model)) {
      pairs.push([k, metrics.without_model[k], metrics.with_model[k]]);
    }
  } else {
    for (const [k, v] of Object.entries(metrics)) {
      if (v && typeof v === "object" && "with_model" in v) { pairs.push([k, v.without_model, v.with_model]); }
    }
  }
  const fmt = (x) => (typeof x === "number" ? x.toFixed(2) : "–");
  return pairs.map(([k, without, withModel]) => `${k} ${fmt(without)} → ${fmt(withModel)}`).join(", ");
}

function renderLastTraining(run) {
  const text = run ? summarizeMetrics(run.metrics) : "";
  $("last-metrics").textContent = text ? `Held-out ${text} (without → with Deep Memory)` : "";
  show("last-metrics", Boolean(text));
}

function renderRun(run) {
  show("run", Boolean(run));
  if (!run) { closeStream(); return; }
  $("run-id").textContent = run.id;
  $("run-status").textContent = statusLabel(run.status);
  const failed = run.status.endsWith("_failed");
  const running = run.status === "generating" || run.status === "training";
  show("run-error", failed && Boolean(run.error_message));
  $("run-error").textContent = run.error_message || "";
  show("proceed", failed);
  show("delete", failed);
  show("cancel", running);
  show("train", run.status === "generated");
  showUsage(run);
  $("progress").classList.toggle("stalled", failed);
  const generation = run.status === "generating" || run.status === "generated"
    || run.status === "generating_failed";
  show("progress", running || generation);
  if (generation && run.total_chunks) {
    setProgress(run.generated_chunks / run.total_chunks,
      `Generated questions for ${run.generated_chunks}/${run.total_chunks} chunks`);
  }
  if (run.status === "generated") {
    $("progress-text").textContent = `${run.pair_count} question–chunk pairs ready to train`;
  } else if (run.status === "training" && !stream) {
    setProgress(0, "Training the Deep Memory model…");
  } else if (run.status === "training_failed") {
    $("progress-text").textContent = `${run.pair_count} pairs kept; Proceed submits them again`;
  }
  if (running && run.latest_job_id) {
    if (finishedJobs.has(run.latest_job_id)) { scheduleRecheck(); }
    else { follow(run.latest_job_id); }
  }
}

function scheduleRecheck() {
  if (recheck) { return; }
  recheck = setTimeout(() => { recheck = null; refresh(); }, STALE_RECHECK_MS);
}

function setProgress(fraction, text) {
  const pct = Math.max(0, Math.min(100, Math.round(fraction * 100)));
  $("progress-fill").style.width = pct + "%";
  $("progress").setAttribute("aria-valuenow", String(pct));
  if (text !== undefined) { $("progress-text").textContent = text; }
}

function closeStream() {
  if (stream) { stream.close(); stream = null; }
}

function follow(jobId) {
  if (finishedJobs.has(jobId) || (stream && stream.jobId === jobId)) { return; }
  closeStream();
  const source = new EventSource(`/api/events/stream/${encodeURIComponent(jobId)}`);
  source.jobId = jobId;
  stream = source;
  show("progress", true);
  $("progress").classList.remove("stalled");
  source.addEventListener("progress", (e) => {
    const data = JSON.parse(e.data);
    setProgress(data.fraction, data.message);
    if (data.llm_calls !== undefined) { showUsage(data); }
  });
  source.addEventListener("status", (e) => {
    const data = JSON.parse(e.data);
    $("run-status").textContent = statusLabel(data.status);
    if (data.message) { $("progress-text").textContent = data.message; }
  });
  const finish = () => {
    finishedJobs.add(jobId);
    if (stream === source) { closeStream(); }
    refresh();
  };
  source.addEventListener("done", () => { setProgress(1); finish(); });
  source.addEventListener("failed", finish);
  // the server closes the stream after the terminal event; a drop before it reconnects
  // by itself with Last-Event-ID, so only a source the browser gave up on needs a look
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      if (stream === source) { closeStream(); }
      scheduleRecheck();
    }
  };
}

async function fetchRun(runId) {
  if (!runId) { return null; }
  const r = await api("GET", `/api/deep-memory/runs/${encodeURIComponent(runId)}`);
  return r.ok ? r.data : null;
}

async function refresh() {
  const r = await api("GET", "/api/deep-memory/settings");
  if (!r.ok) { notice(r.data.detail || "Could not load the settings", true); return; }
  const s = r.data;
  show("loading", false);
  const available = s.is_cloud || s.trainer === "local";
  show("cloud-warning", !available);
  show("content", available);
  if (!available) { closeStream(); return; }
  renderSettings(s);
  const [blocking, last] = await Promise.all([
    fetchRun(s.blocking_run_id),
    fetchRun(s.last_training_run_id),
  ]);
  renderRun(blocking);
  renderLastTraining(last);
}

async function act(promise, onOk) {
  const r = await promise;
  if (r.ok) {
    if (r.data.message) { notice(r.data.message); }
    if (onOk) { onOk(r.data); }
  } else {
    notice(r.data.detail || `Request failed (${r.status})`, true);
  }
  await refresh();
}

function currentRunId() { return $("run-id").textContent; }

function renderResults(list, reply) {
  // a column that could not be searched says why in its place (no model yet, say)
  if (!reply.ok || !reply.data.results.length) {
    const li = document.createElement("li");
    li.className = reply.ok ? "hint empty" : "error empty";
    li.textContent = reply.ok ? "No results" : (reply.data.detail || `Search failed (${reply.status})`);
    list.replaceChildren(li);
    return;
  }
  list.replaceChildren(...reply.data.results.map((hit) => {
    const li = document.createElement("li");
    li.textContent = hit.text.length > 240 ? hit.text.slice(0, 240) + "…" : hit.text;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = ` (${hit.score.toFixed(3)})`;
    li.append(score);
    return li;
  }));
}

async function search(event) {
  event.preventDefault();
  const q = $("search-q").value.trim();
  if (!q) { return; }
  const form = $("search-form");
  form.setAttribute("aria-busy", "true");
  const params = (dm) => new URLSearchParams({ q, k: "5", deep_memory: String(dm) });
  try {
    const [plain, dm] = await Promise.all([
      api("GET", `/api/deep-memory/search?${params(false)}`),
      api("GET", `/api/deep-memory/search?${params(true)}`),
    ]);
    renderResults($("results-plain"), plain);
    renderResults($("results-dm"), dm);
  } finally {
    form.removeAttribute("aria-busy");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("generate").addEventListener("click", () => {
    notice("");
    const body = $("regenerate").checked ? { regenerate: true } : {};
    act(api("POST", "/api/deep-memory/generate", body), (d) => follow(d.job_id));
  });
  $("regenerate").addEventListener("change", loadEstimate);
  const stopDialog = $("confirm-cancel");
  $("cancel").addEventListener("click", () => {
    stopDialog.returnValue = "";
    stopDialog.showModal();
  });
  stopDialog.addEventListener("close", () => {
    if (stopDialog.returnValue === "stop") {
      act(api("POST", "/api/deep-memory/cancel", { training_run_id: currentRunId() }));
    }
  });
  $("proceed").addEventListener("click", () => {
    act(api("POST", "/api/deep-memory/proceed", { training_run_id: currentRunId() }),
      (d) => follow(d.job_id));
  });
  $("train").addEventListener("click", () => {
    notice("");
    act(api("POST", "/api/deep-memory/train", { training_run_id: currentRunId() }),
      (d) => follow(d.job_id));
  });
  const dialog = $("confirm-delete");
  $("delete").addEventListener("click", () => {
    dialog.returnValue = "";
    dialog.showModal();
  });
  dialog.addEventListener("close", () => {
    if (dialog.returnValue === "delete") {
      act(api("DELETE", `/api/deep-memory/runs/${encodeURIComponent(currentRunId())}`));
    }
  });
  $("enable-toggle").addEventListener("change", (e) => {
    const enabled = e.target.checked;
    act(api("PUT", "/api/deep-memory/settings", { enabled }), () => {
      notice(enabled ? "Deep Memory is on: searches use the trained model."
        : "Deep Memory is off: searches use plain embeddings.");
    });
  });
  $("search-form").addEventListener("submit", search);
  refresh();
});
