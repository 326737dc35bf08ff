"use strict";
// The Deep Memory page: settings, the user's documents (list and upload), a search comparison,
// generation with a live progress bar (SSE), recovery of failed runs (Proceed / Delete),
// training, and the run history. Talks only to the gateway (/api/...), which authenticates
// by the session cookie. It shows what the service says, as it is now: it follows a run's
// events, looks again when a stream or the service goes away (with backoff, until it is back),
// and notices runs and settings changed elsewhere (the API, the command line, another tab).

const BLOCK_MESSAGES = {
  generating: "Training data is being generated. Wait for it to finish before generating again.",
  generated: "Training data is ready. Train it before generating again.",
  training: "A Deep Memory model is training. Wait for it to finish before generating again.",
  generating_failed: "Generation failed. Proceed to resume it, or delete the run, before generating again.",
  training_failed: "Training failed. Proceed to retry it, or delete the run, before generating again.",
};
// a run cancelled by a user is failed by the contract, but not broken: it says so
const CANCELLED_BLOCK = "The run was cancelled. Proceed to resume it, or delete the run, before generating again.";
// a run that still says "running" after its job ended is being recovered by the server (a
// lease sweep marks it failed); look again now and then instead of re-reading the old job
const STALE_RECHECK_MS = 3000;
// how often the page asks whether anything changed elsewhere (while it is shown)
const POLL_MS = 4000;
// waits between tries while the service cannot be reached: short, so that the page is right
// within seconds of the service being back
const RETRY_MS = [1000, 2000, 3000, 5000];

const $ = (id) => document.getElementById(id);
let stream = null;
let recheck = null;
// jobs whose terminal event was seen: their streams only replay the past
const finishedJobs = new Set();

// ── Talking to the service ──────────────────────────────────────────────────────────────────

const UNREACHABLE = "The service cannot be reached";

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
    return { ok: false, status: 0, data: { detail: `${UNREACHABLE}: check your connection.` } };
  }
  if (response.status === 401) {
    window.location.assign("/login");
    throw new Error("not logged in");
  }
  let data = {};
  try { data = await response.json(); } catch (_) { /* an empty or non-JSON body */ }
  return { ok: response.ok, status: response.status, data };
}

// the service itself is away (the network, the gateway's backend, a database restarting):
// worth trying again by itself, unlike a refusal
const away = (r) => r.status === 0 || r.status === 502 || r.status === 503;

let retries = 0;
let retryTimer = null;

function connectionLost(r) {
  const wait = RETRY_MS[Math.min(retries, RETRY_MS.length - 1)];
  retries += 1;
  const why = (r.data && r.data.detail) || `error ${r.status}`;
  const el = $("connection");
  el.textContent = `${UNREACHABLE} (${why.replace(/\.$/, "")}). Trying again every few seconds; `
    + "what is shown below may be out of date.";
  show("connection", true);
  if (!retryTimer) {
    retryTimer = setTimeout(() => { retryTimer = null; refresh(); }, wait);
  }
}

function connectionBack() {
  if (retries > 0 || !$("connection").hidden) {
    show("connection", false);
  }
  retries = 0;
}

// the job a notice is about ("Resuming generation from chunk 10/21"): it goes when the job ends
let noticeJob = null;
// the notice of a settings read that failed for a while (503, 429), while it stands
let passing = null;

function notice(text, kind = "", jobId = null) {
  const el = $("notice");
  el.textContent = text || "";
  el.classList.toggle("error", kind === "error" && Boolean(text));
  el.classList.toggle("warning", kind === "warning" && Boolean(text));
  noticeJob = jobId;
}

function show(id, visible) { $(id).hidden = !visible; }

// ── Words and numbers: one format for each ──────────────────────────────────────────────────

const STATUS_LABELS = {
  generating: "Generating",
  generated: "Generated",
  training: "Training",
  completed: "Completed",
  generating_failed: "Generation failed",
  training_failed: "Training failed",
};

const failedStatus = (status) => status.endsWith("_failed");
const cancelled = (run) => failedStatus(run.status) && Boolean(run.cancel_requested_at);

function statusLabel(status) { return STATUS_LABELS[status] || status.replaceAll("_", " "); }
function runLabel(run) { return cancelled(run) ? "Cancelled" : statusLabel(run.status); }

const DATE_FORMAT = new Intl.DateTimeFormat("en-GB", { dateStyle: "medium", timeStyle: "short" });
function when(iso) { return iso ? DATE_FORMAT.format(new Date(iso)) : "—"; }

const number = (n) => Number(n).toLocaleString("en-US");
const plural = (n, one, many) => `${number(n)} ${n === 1 ? one : many}`;
const dollars = (x) => `$${x < 0.01 ? x.toFixed(4) : x.toFixed(2)}`;
const percent = (x) => `${Math.round(x * 100)}%`;

function bytes(n) {
  if (n < 1000) { return plural(n, "byte", "bytes"); }
  const units = ["kB", "MB", "GB"];
  let value = n / 1000;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return `${value.toLocaleString("en-US", { maximumFractionDigits: 1 })} ${units[unit]}`;
}

function howLong(minutes) {
  if (minutes < 1) { return "under a minute"; }
  if (minutes < 90) { return `about ${plural(Math.round(minutes), "minute", "minutes")}`; }
  return `about ${plural(Math.round(minutes / 60), "hour", "hours")}`;
}

// ── The estimate ────────────────────────────────────────────────────────────────────────────

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
  if (e.expected_minutes !== null && e.expected_minutes !== undefined) {
    const limited = e.minutes_at_rate_limit !== null && e.minutes_at_rate_limit >= e.expected_minutes;
    parts.push(`${howLong(e.expected_minutes)}${limited ? " at the provider's rate limit" : ""}`);
  }
  return `${what}: ${parts.join(", ")}.`;
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

// ── Settings, and Deep Memory as it is ──────────────────────────────────────────────────────

// the settings last shown: a change made elsewhere is told, and makes the page look again
let shownSettings = null;

function settingsKey(s) {
  return JSON.stringify([s.enabled, s.can_enable, s.last_training_run_id, s.blocking_run_id,
    s.blocking_run_status, s.total_chunks, s.trained_chunk_count, s.can_enable_reason]);
}

function renderSettings(s, lastRun) {
  const before = shownSettings;
  shownSettings = s;
  const trained = Boolean(s.last_training_run_id);
  trainedOnce = trained;
  const keptOut = trained && !s.can_enable;
  $("enabled").textContent = s.enabled ? "on" : (keptOut ? "off: the last model was not enabled" : "off");
  $("last-trained").textContent = s.last_trained_at ? when(s.last_trained_at) : "never";
  $("trained-chunks").textContent = number(s.trained_chunk_count);
  $("total-chunks").textContent = number(s.total_chunks);
  show("enable-row", trained);
  const toggle = $("enable-toggle");
  toggle.checked = s.enabled;
  toggle.disabled = !s.can_enable && !s.enabled;
  renderVerdict(s, lastRun);
  tellChange(before, s, lastRun);

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

// A change of Deep Memory's state the user did not make here (a training ended, another tab
// or the API turned it on or off) is said, not slipped in.
function tellChange(before, s, lastRun) {
  if (!before) { return; }
  const newModel = s.last_training_run_id && s.last_training_run_id !== before.last_training_run_id;
  if (newModel && !s.can_enable) {
    const because = `the model from your latest training was not enabled, because ${verdictBecause(lastRun && lastRun.metrics)}`;
    notice(`${before.enabled ? `Deep Memory is off now: ${because}` : because[0].toUpperCase() + because.slice(1)}. `
      + "Search uses no model until a training makes one that is.", "warning");
  } else if (newModel && s.enabled) {
    notice("Deep Memory now uses the model from your latest training.");
  } else if (newModel) {
    notice("A new model is ready: turn on Deep Memory below to use it for search.");
  } else if (before.enabled !== s.enabled) {
    notice(s.enabled ? "Deep Memory was turned on." : "Deep Memory was turned off: search uses no model.");
  }
}

// The figures a person can follow, from a trainer's metrics: on how many searches held out of
// training, how often the right passage came first (and in the top 10) with and without the
// model. The local trainer reports queries like people's (plain_*) and held-out generated
// questions; others report the latter, or only recall@10. For a refused model, the set the
// verdict rests on, as the trainer checks them (generated questions first): a model refused
// for losing generated questions is not described by queries it broke even on.
function testedOn(m, refused = false) {
  if (!m) { return null; }
  const sets = [];
  if (m.with_model && m.without_model) {
    sets.push({ count: m.eval_queries, withModel: m.with_model, without: m.without_model,
      changes: m.changes, chosen: m.chosen !== undefined, what: "generated" });
  }
  if (m.plain_with_model && m.plain_without_model) {
    sets.push({ count: m.plain_queries, withModel: m.plain_with_model,
      without: m.plain_without_model, changes: m.plain_changes, chosen: m.chosen !== undefined,
      what: "plain" });
  }
  if (sets.length) {
    // an enabled model: the set it did better on, queries like people's first
    const deciding = refused ? sets.find(lostMore) : [...sets].reverse().find(improved);
    return deciding || sets[sets.length - 1];
  }
  const k10 = m["recall@10"];
  if (k10 && typeof k10 === "object" && "with_model" in k10) {
    return { count: null, withModel: { "recall@10": k10.with_model },
      without: { "recall@10": k10.without_model }, changes: null, chosen: true,
      what: "generated" };
  }
  return null;
}

// whether a model found more of a set's passages at some k
function improved(t) {
  return Object.keys(t.without).some((k) => typeof t.withModel[k] === "number" && t.withModel[k] > t.without[k]);
}

// the k beyond the first to speak of: the first where the model gained most (top 10 when it
// gained nowhere), so that an enabled model's sentence shows what it was enabled for
function topK(t) {
  const gain = (k) => (typeof t.withModel[k] === "number" ? t.withModel[k] - t.without[k] : -1);
  const ks = Object.keys(t.without).filter((k) => k !== "recall@1" && gain(k) > 0);
  ks.sort((a, b) => gain(b) - gain(a) || Number(a.split("@")[1]) - Number(b.split("@")[1]));
  return ks.length ? ks[0] : "recall@10";
}

// whether a model lost more of a set's searches than it won at recall@k, or scored lower
function lostAt(t, k) {
  return Boolean(t.changes && t.changes[k] && t.changes[k].lost > t.changes[k].won)
    || (typeof t.withModel[k] === "number" && t.withModel[k] < t.without[k]);
}

// whether it did so at any k
function lostMore(t) {
  return Object.keys(t.without).some((k) => lostAt(t, k));
}

// why a model was kept out, in a user's words (the trainer's own sentence is in the details)
function verdictBecause(m) {
  const t = testedOn(m, true);
  if (!t) { return "it did not do better than plain search in the trainer's tests"; }
  if (m && m.shapes_tried && !t.chosen) {
    return "none of the models it tried did better than plain search on practice questions";
  }
  if (lostAt(t, "recall@1")) {
    return "it found the right passage first less often than plain search";
  }
  if (lostAt(t, "recall@10")) {
    return "it found the right passage in the top 10 less often than plain search";
  }
  return "it did no better than plain search";
}

// One sentence first, in a user's words; the figures, a chart and the trainer's own verdict
// under "How the model was tested".
function renderVerdict(s, run) {
  const m = run ? run.metrics : null;
  const t = testedOn(m, !s.can_enable);
  let sentence = "";
  if (t && s.last_training_run_id) {
    const on = !t.count ? "Testing the new model"
      : t.what === "generated" ? `Testing the new model on ${plural(t.count, "generated question", "generated questions")} it was not trained on`
        : `Testing the new model on ${plural(t.count, "search", "searches")} it had not seen`;
    if (s.can_enable && typeof t.withModel["recall@1"] === "number") {
      const [first, before] = [t.withModel["recall@1"], t.without["recall@1"]];
      let how = percent(first) === percent(before) ? `as often as without it (${percent(first)})`
        : `${percent(first)} of the time, against ${percent(before)} without it`;
      const k = topK(t);
      const [top, topBefore] = [t.withModel[k], t.without[k]];
      if (typeof top === "number" && typeof topBefore === "number") {
        how += `, and in the top ${k.split("@")[1]} ${percent(top)} of the time, against ${percent(topBefore)}`;
      }
      sentence = `${on}, Deep Memory put the right passage first ${how}. It can be used for search.`;
    } else if (s.can_enable) {
      sentence = `${on}, Deep Memory found the right passage in the top 10 ${percent(t.withModel["recall@10"])} `
        + `of the time, against ${percent(t.without["recall@10"])} without it. It can be used for search.`;
    } else {
      sentence = `${on}: ${verdictBecause(m)}, so it was not enabled.`;
    }
  } else if (s.last_training_run_id && !s.can_enable) {
    sentence = "The last trained model was not enabled.";
  }
  $("last-metrics").textContent = sentence;
  show("last-metrics", Boolean(sentence));
  const reason = s.can_enable ? "" : (s.can_enable_reason || "");
  $("enable-reason").textContent = reason ? `The trainer's verdict: ${reason}` : "";
  show("enable-reason", Boolean(reason));
  const figures = t ? Object.keys(t.withModel).filter((k) => typeof t.without[k] === "number") : [];
  $("verdict-figures").textContent = figures.map((k) => `${k} ${t.without[k].toFixed(2)} → ${t.withModel[k].toFixed(2)}`).join(", ")
    + (figures.length ? " (without → with Deep Memory)" : "");
  $("verdict-chart").replaceChildren(...(figures.length ? [recallChart(t, figures)] : []));
  show("verdict-details", Boolean(reason || figures.length));
  const state = !s.last_training_run_id ? ""
    : s.enabled ? `Search uses the model trained on ${when(s.last_trained_at)}.`
      : s.can_enable ? "Deep Memory is off: search uses no model. Turn it on to use the trained one."
        : "Search uses no model: the last trained one was not good enough to use.";
  $("model-state").textContent = state;
  show("model-state", Boolean(state));
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) { el.setAttribute(k, String(v)); }
  return el;
}

// How often the right passage was found, without and with the model, at each k: two bars.
function recallChart(t, ks) {
  const width = 320;
  const row = 26;
  const label = 80;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${ks.length * row + 18}`, role: "img",
    "aria-label": "How often the right passage was found, without and with Deep Memory" });
  ks.forEach((k, i) => {
    const y = i * row;
    const text = svg("text", { x: 0, y: y + 15, class: "axis" });
    const n = k.replace("recall@", "");
    text.textContent = n === "1" ? "first" : `in the top ${n}`;
    chart.append(text);
    [[t.without[k], "without", 0], [t.withModel[k], "with", 10]].forEach(([value, kind, dy]) => {
      const w = Math.max(1, value * (width - label - 40));
      chart.append(svg("rect", { x: label, y: y + 4 + dy, width: w, height: 8, class: `bar ${kind}` }));
      const v = svg("text", { x: label + w + 4, y: y + 12 + dy, class: "value" });
      v.textContent = percent(value);
      chart.append(v);
    });
  });
  const legend = svg("text", { x: label, y: ks.length * row + 14, class: "axis" });
  legend.textContent = "grey: without Deep Memory · blue: with it";
  chart.append(legend);
  return chart;
}

// ── The current run ─────────────────────────────────────────────────────────────────────────

let currentRun = null;

function renderRun(run) {
  currentRun = run && !["completed"].includes(run.status) ? run : null;
  show("run", Boolean(currentRun));
  if (!currentRun) { closeStream(); return; }
  run = currentRun;
  $("run-id").textContent = run.id;
  $("run-status").textContent = runLabel(run);
  const failed = failedStatus(run.status);
  const stopped = cancelled(run);
  const running = run.status === "generating" || run.status === "training";
  const error = $("run-error");
  show("run-error", failed && Boolean(run.error_message));
  error.textContent = run.error_message || "";
  // a cancel is the user's own doing: said once, plainly, not as an alarm
  error.className = stopped ? "note" : "error";
  error.setAttribute("role", stopped ? "status" : "alert");
  if (stopped) {
    $("block-message").textContent = CANCELLED_BLOCK;
  }
  show("proceed", failed);
  show("delete", failed);
  show("cancel", running);
  show("train", run.status === "generated");
  showUsage(run);
  $("progress").classList.toggle("stalled", failed);
  const generation = run.status === "generating" || run.status === "generated"
    || run.status === "generating_failed";
  show("progress", running || generation);
  if (run.status !== "training") { show("training-details", false); }
  if (generation && run.total_chunks) {
    setProgress(run.generated_chunks / run.total_chunks,
      `Generated questions for ${number(run.generated_chunks)}/${number(run.total_chunks)} chunks`);
  }
  if (run.status === "generated") {
    $("progress-text").textContent = `${plural(run.pair_count, "question–chunk pair", "question–chunk pairs")} ready to train`;
  } else if (run.status === "training" && !stream) {
    setProgress(0, "Training the Deep Memory model…");
  } else if (run.status === "training_failed") {
    $("progress-text").textContent = `${plural(run.pair_count, "pair", "pairs")} kept; Proceed submits them again`;
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

// how fast a generation goes, from its progress events: for "about N minutes left"
let pace = null;

function generationText(data) {
  const now = Date.now();
  if (!pace || pace.jobId !== data.job_id || data.done < pace.done) {
    pace = { jobId: data.job_id, at: now, done: data.done };
  }
  let text = data.message;
  const seconds = (now - pace.at) / 1000;
  const made = data.done - pace.done;
  if (seconds >= 3 && made > 0 && data.done < data.total) {
    const left = ((data.total - data.done) * seconds) / made / 60;
    text += ` · ${howLong(left)} left`;
  }
  return text;
}

// Training in a user's words; the trainer's own words and a chart of how well each model
// found the right passage on practice questions as it learned are under "Details".
let trainingPoints = [];

function trainingText(data) {
  const d = data.details || {};
  if (typeof d.model === "number" && typeof d.epoch === "number") {
    return `Training the model: ${percent(data.fraction)} done (trying design ${d.model} of 4, round ${d.epoch})`;
  }
  return data.message;
}

function showTrainingDetails(data) {
  const d = data.details || {};
  $("training-raw").textContent = data.message || "";
  if (typeof d["recall@10"] === "number") {
    // across the whole training: the bar's fraction, each design a line of its own
    trainingPoints.push([data.fraction, d["recall@10"], d.model]);
    $("training-chart").replaceChildren(learningChart(trainingPoints));
  }
  show("training-details", Boolean(data.message));
}

function learningChart(points) {
  const width = 320;
  const height = 90;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height + 16}`, role: "img",
    "aria-label": "How often each model found the right passage in its top 10 on practice questions, as it learned" });
  chart.append(svg("line", { x1: 0, y1: height, x2: width, y2: height, class: "axis-line" }));
  const models = [...new Set(points.map(([, , model]) => model))];
  models.forEach((model) => {
    const mine = points.filter(([, , m]) => m === model);
    chart.append(svg("polyline", {
      points: mine.map(([at, value]) => `${at * width},${height - value * height}`).join(" "),
      class: `line model-${model % 4}` }));
  });
  const text = svg("text", { x: 0, y: height + 13, class: "axis" });
  text.textContent = "right passage in the top 10 on practice questions, as training goes on";
  chart.append(text);
  return chart;
}

// the run's row in the history, kept in step with the live card
function updateHistoryRow(runId, status, done, total) {
  const row = document.querySelector(`#runs tr[data-run-id="${CSS.escape(runId)}"]`);
  if (!row) { return; }
  if (status) {
    row.cells[1].textContent = statusLabel(status);
    row.cells[1].className = `status ${status}`;
  }
  if (typeof done === "number" && status === "generating") {
    row.cells[2].textContent = `${number(done)}/${number(total)}`;
  }
}

// A terminal event says how the run ended: shown at once, before (or without) a fresh read,
// so that a service going away right after cannot leave the page saying "Generating".
function applyEnd(data) {
  if (!currentRun || data.run_id !== currentRun.id) { return; }
  const ended = { ...currentRun, status: data.status };
  if (data.error_message !== undefined) { ended.error_message = data.error_message; }
  if (typeof data.pairs === "number") { ended.pair_count = data.pairs; }
  renderRun(ended);
  updateHistoryRow(ended.id, ended.status);
  const blocked = BLOCK_MESSAGES[ended.status];
  if (blocked && !cancelled(ended)) { $("block-message").textContent = blocked; }
}

function follow(jobId) {
  if (finishedJobs.has(jobId) || (stream && stream.jobId === jobId)) { return; }
  closeStream();
  trainingPoints = [];
  const source = new EventSource(`/api/events/stream/${encodeURIComponent(jobId)}`);
  source.jobId = jobId;
  stream = source;
  show("progress", true);
  $("progress").classList.remove("stalled");
  source.addEventListener("progress", (e) => {
    const data = JSON.parse(e.data);
    if (data.status === "training") {
      setProgress(data.fraction, trainingText(data));
      showTrainingDetails(data);
    } else {
      setProgress(data.fraction, generationText(data));
    }
    if (data.llm_calls !== undefined) { showUsage(data); }
    updateHistoryRow(data.run_id, data.status, data.done, data.total);
    // what the card would show if the service went away now
    if (currentRun && data.run_id === currentRun.id && data.status === "generating") {
      currentRun = { ...currentRun, generated_chunks: data.done };
      for (const key of ["llm_calls", "prompt_tokens", "completion_tokens", "cost_usd"]) {
        if (data[key] !== undefined) { currentRun[key] = data[key]; }
      }
    }
  });
  source.addEventListener("status", (e) => {
    const data = JSON.parse(e.data);
    $("run-status").textContent = statusLabel(data.status);
    if (currentRun && data.run_id === currentRun.id) { currentRun = { ...currentRun, status: data.status }; }
    if (data.message) { $("progress-text").textContent = data.message; }
    updateHistoryRow(data.run_id, data.status);
  });
  const finish = (e) => {
    finishedJobs.add(jobId);
    if (noticeJob === jobId) { notice(""); }
    if (stream === source) { closeStream(); }
    try { applyEnd(JSON.parse(e.data)); } catch (_) { /* no data: the fresh read says */ }
    refresh();
  };
  source.addEventListener("done", (e) => { setProgress(1); finish(e); });
  source.addEventListener("failed", finish);
  // the server closes the stream after the terminal event; a drop before it reconnects by
  // itself with Last-Event-ID, but a stream the browser gave up on (the gateway answered 502
  // while the service was away) is looked at again, with backoff, until the service is back
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      if (stream === source) { closeStream(); }
      scheduleRecheck();
    }
  };
}

async function fetchRun(runId) {
  if (!runId) { return { ok: true, data: null }; }
  const r = await api("GET", `/api/deep-memory/runs/${encodeURIComponent(runId)}`);
  return r.ok ? r : (r.status === 404 ? { ok: true, data: null } : r);
}

let refreshing = false;
let refreshAgain = false;

// Everything read again; one at a time (a second ask while one runs makes one more after it).
async function refresh() {
  if (refreshing) { refreshAgain = true; return; }
  refreshing = true;
  try {
    await refreshOnce();
  } finally {
    refreshing = false;
    if (refreshAgain) { refreshAgain = false; refresh(); }
  }
}

async function refreshOnce() {
  const r = await api("GET", "/api/deep-memory/settings");
  if (!r.ok) {
    if (away(r)) {
      connectionLost(r);
    } else if (r.status === 429) {
      // too many of this user's calls at once: a passing condition; look again, and take the
      // notice back once it passed
      passing = r.data.detail || "Too many requests at once";
      notice(passing, "warning");
      scheduleRecheck();
    } else {
      notice(r.data.detail || "Could not load the settings", "error");
    }
    return;
  }
  if (passing !== null && $("notice").textContent === passing) { notice(""); }
  passing = null;
  const s = r.data;
  const [blocking, last] = await Promise.all([
    fetchRun(s.blocking_run_id),
    fetchRun(s.last_training_run_id),
  ]);
  const failedRead = [blocking, last].find((x) => !x.ok);
  if (failedRead) {
    if (away(failedRead)) { connectionLost(failedRead); return; }
  }
  connectionBack();
  show("loading", false);
  const available = s.is_cloud || s.trainer === "local";
  show("cloud-warning", !available);
  show("content", available);
  if (!available) { closeStream(); return; }
  renderSettings(s, last.ok ? last.data : null);
  renderRun(blocking.ok ? blocking.data : null);
  await Promise.all([loadDocuments(), loadHistory()]);
}

// Whether anything changed elsewhere (a run started by the API, the command line or another
// tab; Deep Memory turned on or off; documents added): a cheap read, and a full one if so.
async function poll() {
  if (document.hidden || refreshing || retryTimer) { return; }
  const r = await api("GET", "/api/deep-memory/settings");
  if (!r.ok) {
    if (away(r)) { connectionLost(r); }
    return;
  }
  if (!shownSettings || settingsKey(r.data) !== settingsKey(shownSettings)) { refresh(); }
}

async function act(promise, onOk, { quiet = false } = {}) {
  const r = await promise;
  if (r.ok) {
    if (r.data.message && !quiet) { notice(r.data.message, "", r.data.job_id || null); }
    if (onOk) { onOk(r.data); }
  } else {
    notice(r.data.detail || `Request failed (${r.status})`, "error");
  }
  await refresh();
}

function currentRunId() { return $("run-id").textContent; }

// ── Search ──────────────────────────────────────────────────────────────────────────────
// Works before any training: the plain column needs only documents; the Deep Memory column
// says in its place why it cannot search (no model, or the model was kept out). Once both
// answer, each Deep Memory result says how it moved against plain search.

const SNIPPET_CHARS = 280;
const TOP_K = 5;
const UNTRAINED = "No Deep Memory model yet: generate training data and train it, then compare here.";
// whether a run was ever trained (from the settings): before that there is nothing to ask
let trainedOnce = false;

// A chunk's markdown as a person reads it: its heading as a title, the rest as plain text.
function readable(markdown) {
  const lines = markdown.split("\n");
  let title = "";
  const heading = /^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$/;
  const first = lines.findIndex((line) => line.trim() !== "");
  if (first >= 0 && heading.test(lines[first])) {
    title = lines[first].replace(heading, "$1");
    lines.splice(first, 1);
  }
  const plain = (text) => text
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, "$1")       // links and images: their text
    .replace(/`+([^`]*)`+/g, "$1")                     // code spans
    .replace(/(\*\*|__)(.+?)\1/g, "$2")                // strong
    .replace(/(^|[\s(])[*_](\S(?:.*?\S)?)[*_](?=[\s).,;:!?]|$)/g, "$1$2")  // emphasis
    .replace(/^\s{0,3}#{1,6}\s+/gm, "")               // headings inside
    .replace(/^\s{0,3}>\s?/gm, "")                     // quotes
    .replace(/^\s*[-*+]\s+/gm, "• ")                   // list items
    .replace(/\s+/g, " ")
    .trim();
  let body = plain(lines.join("\n"));
  if (body.length > SNIPPET_CHARS) {
    const cut = body.lastIndexOf(" ", SNIPPET_CHARS);
    body = body.slice(0, cut > SNIPPET_CHARS / 2 ? cut : SNIPPET_CHARS) + " …";
  }
  return { title: plain(title), body };
}

function emptyResult(list, text, isError) {
  const li = document.createElement("li");
  li.className = isError ? "error empty" : "hint empty";
  li.textContent = text;
  list.replaceChildren(li);
}

// a score of 0 shares nothing with the question: not a result
const scored = (reply) => (reply && reply.ok ? reply.data.results.filter((hit) => hit.score > 0) : null);

function renderResults(list, reply, moves) {
  // a column that could not be searched says why in its place (no model yet, say)
  if (!reply.ok) {
    emptyResult(list, reply.data.detail || `Search failed (${reply.status})`, true);
    return;
  }
  const hits = scored(reply);
  if (!hits.length) {
    emptyResult(list, "No passage shares anything with your question.", false);
    return;
  }
  list.replaceChildren(...hits.map((hit) => {
    const li = document.createElement("li");
    li.dataset.chunkId = String(hit.chunk_id);
    const { title, body } = readable(hit.text);
    if (title) {
      const strong = document.createElement("strong");
      strong.className = "hit-title";
      strong.textContent = title;
      li.append(strong, " ");
    }
    li.append(body);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = ` score ${hit.score.toFixed(2)}`;
    li.append(score);
    const move = moves && moves.get(hit.chunk_id);
    if (move) {
      const badge = document.createElement("span");
      badge.className = `move ${move.kind}`;
      badge.textContent = move.text;
      li.append(" ", badge);
    }
    return li;
  }));
}

// How each result moved between the two columns: up or down a few places, new in the top k,
// the same place, or gone from the other column.
function comparison(plainHits, dmHits) {
  const plainAt = new Map(plainHits.map((hit, i) => [hit.chunk_id, i]));
  const dmAt = new Map(dmHits.map((hit, i) => [hit.chunk_id, i]));
  const dmMoves = new Map();
  const plainMoves = new Map();
  let moved = 0;
  let fresh = 0;
  dmHits.forEach((hit, i) => {
    const was = plainAt.get(hit.chunk_id);
    if (was === undefined) {
      fresh += 1;
      dmMoves.set(hit.chunk_id, { kind: "new", text: `new in the top ${TOP_K}` });
    } else if (was > i) {
      moved += 1;
      dmMoves.set(hit.chunk_id, { kind: "up", text: `↑ up ${plural(was - i, "place", "places")}` });
    } else if (was < i) {
      moved += 1;
      dmMoves.set(hit.chunk_id, { kind: "down", text: `↓ down ${plural(i - was, "place", "places")}` });
    } else {
      dmMoves.set(hit.chunk_id, { kind: "same", text: "same place" });
    }
  });
  let dropped = 0;
  plainHits.forEach((hit) => {
    if (!dmAt.has(hit.chunk_id)) {
      dropped += 1;
      plainMoves.set(hit.chunk_id, { kind: "dropped", text: `not in Deep Memory's top ${TOP_K}` });
    }
  });
  let summary;
  if (!moved && !fresh && !dropped) {
    summary = "Same results, in the same order, with and without Deep Memory.";
  } else {
    const parts = [];
    if (moved) { parts.push(`${plural(moved, "passage", "passages")} moved`); }
    if (fresh) { parts.push(`${plural(fresh, "passage", "passages")} new in the top ${TOP_K}`); }
    if (dropped) { parts.push(`${plural(dropped, "passage", "passages")} left it`); }
    summary = `Deep Memory changed the results: ${parts.join(", ")}.`;
  }
  return { dmMoves, plainMoves, summary };
}

async function search(event) {
  event.preventDefault();
  const q = $("search-q").value.trim();
  if (!q) { return; }
  const form = $("search-form");
  form.setAttribute("aria-busy", "true");
  const params = (dm) => new URLSearchParams({ q, k: String(TOP_K), deep_memory: String(dm) });
  try {
    const [plain, dm] = await Promise.all([
      api("GET", `/api/deep-memory/search?${params(false)}`),
      trainedOnce ? api("GET", `/api/deep-memory/search?${params(true)}`) : null,
    ]);
    const plainHits = scored(plain);
    const dmHits = scored(dm);
    const compared = plainHits && dmHits ? comparison(plainHits, dmHits) : null;
    renderResults($("results-plain"), plain, compared && compared.plainMoves);
    if (dm) { renderResults($("results-dm"), dm, compared && compared.dmMoves); }
    else { emptyResult($("results-dm"), UNTRAINED, false); }
    $("comparison").textContent = compared ? compared.summary : "";
    show("comparison", Boolean(compared));
  } finally {
    form.removeAttribute("aria-busy");
  }
}

// ── Documents: the list, and uploads from the file picker or a drop ─────────────────────────
// Each file goes to the service as it is on disk (POST /api/documents/file): the service
// decodes it, as the command line does, and says which files it cannot read and why. The page
// never decodes a file itself.

// the service's own limit, from the documents listing; this until it is known
let maxFileBytes = 16777216;
let uploading = false;
// a limit that still refuses after this many tries is reported, not waited on for ever
const UPLOAD_ATTEMPTS = 10;
// what a person calls the encodings a file may be read in
const ENCODINGS = {
  cp1252: "Western European (Windows-1252)",
  iso8859_15: "Western European (ISO 8859-15)",
  latin_1: "Western European (ISO 8859-1)",
  cp1250: "Central European (Windows-1250)",
  cp1251: "Cyrillic (Windows-1251)",
  koi8_r: "Cyrillic (KOI8-R)",
  koi8_u: "Cyrillic (KOI8-U)",
  cp866: "Cyrillic (DOS 866)",
  cp1253: "Greek (Windows-1253)",
  cp1254: "Turkish (Windows-1254)",
  cp1257: "Baltic (Windows-1257)",
  cp932: "Japanese (Shift JIS)",
  shift_jis: "Japanese (Shift JIS)",
  euc_jp: "Japanese (EUC-JP)",
  gb18030: "Chinese (GB18030)",
  big5: "Chinese (Big5)",
  cp949: "Korean (EUC-KR)",
  "utf-16-le": "UTF-16",
  "utf-16-be": "UTF-16",
  "utf-32-le": "UTF-32",
  "utf-32-be": "UTF-32",
};

function retryAfterSeconds(header) {
  if (!header) { return 1; }
  const seconds = Number(header);
  if (Number.isFinite(seconds)) { return Math.max(0, seconds); }
  const date = Date.parse(header);
  return Number.isNaN(date) ? 1 : Math.max(0, (date - Date.now()) / 1000);
}

// One file's bytes to POST /api/documents/file, with upload progress (fetch reports none).
function postFile(file, onProgress) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    const query = new URLSearchParams({ name: file.name, skip_unchanged: "true" });
    xhr.open("POST", `/api/documents/file?${query}`);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = (e) => onProgress(e.loaded);
    xhr.onload = () => {
      if (xhr.status === 401) { window.location.assign("/login"); return; }
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      resolve({ ok: xhr.status >= 200 && xhr.status < 300, status: xhr.status, data,
        retryAfter: xhr.getResponseHeader("Retry-After") });
    };
    xhr.onerror = () => resolve({ ok: false, status: 0,
      data: { detail: `${UNREACHABLE}: check your connection and try again` } });
    xhr.send(file);
  });
}

function uploadStatus(text, isError = false) {
  const el = $("upload-status");
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError && text));
}

function uploadProgress(fraction) {
  const bar = $("upload-progress");
  const pct = Math.max(0, Math.min(100, Math.round(fraction * 100)));
  bar.querySelector(".fill").style.width = pct + "%";
  bar.setAttribute("aria-valuenow", String(pct));
}

// one line per file: what became of it; a file that was not added stands out as an error
function uploadResult(name, text, kind) {
  const li = document.createElement("li");
  li.className = kind;
  const strong = document.createElement("strong");
  strong.textContent = name;
  li.append(strong, `: ${text}`);
  $("upload-results").append(li);
  show("upload-results", true);
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

async function sendFile(file, before, total) {
  for (let attempt = 1; ; attempt += 1) {
    const reply = await postFile(file, (loaded) => {
      uploadProgress((before + loaded) / total);
      if (loaded >= file.size) { uploadStatus(`Reading ${file.name}…`); }
    });
    if ((reply.status !== 429 && reply.status !== 503) || attempt === UPLOAD_ATTEMPTS) { return reply; }
    // a limit on uploads (or a busy service) says when to come back: wait, then go on
    const wait = retryAfterSeconds(reply.retryAfter);
    const why = (reply.data.detail || "The service is busy").replace(/\.$/, "");
    uploadStatus(`${why}. Trying again in ${Math.ceil(wait)} s…`);
    await sleep(wait * 1000);
  }
}

async function upload(files) {
  if (uploading || !files.length) { return; }
  uploading = true;
  $("dropzone").classList.add("busy");
  $("upload-results").replaceChildren();
  show("upload-results", false);
  let added = 0;
  let chunks = 0;
  let unchanged = 0;
  let refused = 0;
  try {
    const list = [...files];
    const total = list.reduce((sum, f) => sum + f.size, 0) || 1;
    show("upload-progress", true);
    uploadProgress(0);
    let sent = 0;
    for (const [i, file] of list.entries()) {
      uploadStatus(list.length > 1 ? `Uploading ${file.name} (${i + 1} of ${list.length})…` : `Uploading ${file.name}…`);
      if (file.size > maxFileBytes) {
        uploadResult(file.name, `not added: too large (${bytes(file.size)}; the limit is ${bytes(maxFileBytes)})`, "error");
        refused += 1;
      } else {
        const reply = await sendFile(file, sent, total);
        if (reply.ok && reply.data.unchanged) {
          uploadResult(file.name, "already there, unchanged", "unchanged");
          unchanged += 1;
        } else if (reply.ok) {
          const read = ENCODINGS[reply.data.encoding];
          uploadResult(file.name, `added, ${plural(reply.data.chunks, "chunk", "chunks")}${read ? `; read as ${read} text` : ""}`, "added");
          added += 1;
          chunks += reply.data.chunks;
        } else {
          // "body: not text: …" says itself that the file was not added
          const detail = reply.data.detail || `error ${reply.status}`;
          const why = detail.startsWith("body: not text: ") ? detail.replace(/^body: /, "")
            : `not added: ${detail.replace(/^body: /, "")}`;
          uploadResult(file.name, why, "error");
          refused += 1;
        }
      }
      sent += file.size;
      uploadProgress(sent / total);
    }
    const said = [];
    if (added) { said.push(`Added ${plural(added, "file", "files")} (${plural(chunks, "chunk", "chunks")}).`); }
    if (unchanged) { said.push(`${plural(unchanged, "file was", "files were")} already there, unchanged.`); }
    if (refused) { said.push(`${plural(refused, "file was", "files were")} not added: see why below.`); }
    // red when nothing went in; otherwise each refused file is red on its own line
    uploadStatus(said.join(" "), refused > 0 && !added && !unchanged);
    if (added) { await refresh(); }
  } finally {
    uploading = false;
    $("dropzone").classList.remove("busy");
    show("upload-progress", false);
    $("file-input").value = "";
  }
}

// column names, shown beside each value where a phone stacks a row's cells
const DOCUMENT_LABELS = ["", "Chunks", "Added"];

function renderDocuments(listing) {
  const rows = listing.documents.map((doc) => {
    const tr = document.createElement("tr");
    const cells = [doc.title || "(untitled)", number(doc.chunk_count), when(doc.created_at)];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      td.dataset.label = DOCUMENT_LABELS[i];
      if (i === 1) { td.className = "num"; }
      tr.append(td);
    });
    return tr;
  });
  $("documents").querySelector("tbody").replaceChildren(...rows);
  show("documents", rows.length > 0);
  const n = listing.total_documents;
  let summary = n ? `${plural(n, "document", "documents")}, ${plural(listing.total_chunks, "chunk", "chunks")}.`
    : "No documents yet: add some to search them and train Deep Memory.";
  if (n > rows.length) { summary += ` The newest ${number(rows.length)} are listed.`; }
  $("documents-summary").textContent = summary;
}

async function loadDocuments() {
  const r = await api("GET", "/api/documents");
  if (!r.ok) { $("documents-summary").textContent = r.data.detail || "Could not load the documents"; return; }
  maxFileBytes = r.data.max_file_bytes || maxFileBytes;
  renderDocuments(r.data);
}

function setUpUploads() {
  const zone = $("dropzone");
  $("file-input").addEventListener("change", (e) => { upload(e.target.files); });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => { zone.classList.remove("over"); });
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    upload(e.dataTransfer.files);
  });
  // a file dropped beside the zone must not replace the page with its contents
  window.addEventListener("dragover", (e) => { e.preventDefault(); });
  window.addEventListener("drop", (e) => { e.preventDefault(); });
}

// ── Run history ─────────────────────────────────────────────────────────────────────────────

// What a run spent at the LLM, for its history row: tokens (an LLM generator counts them; the
// offline one spends none) and cost (null when no prices are configured).
function historyUsage(run) {
  const tokens = (run.prompt_tokens || 0) + (run.completion_tokens || 0);
  const parts = [];
  if (tokens > 0) { parts.push(`${number(tokens)} tokens`); }
  if (typeof run.cost_usd === "number") { parts.push(dollars(run.cost_usd)); }
  return parts.join(" · ");
}

const RUN_LABELS = ["Started", "", "Chunks", "Pairs", "Ended", ""];

function renderHistory(runs) {
  const withUsage = runs.some((run) => historyUsage(run));
  const rows = [];
  for (const run of runs) {
    const tr = document.createElement("tr");
    tr.dataset.runId = run.id;
    // a run at rest (generated, completed, failed) ended its last step when it last changed
    const running = run.status === "generating" || run.status === "training";
    const ended = running ? null : run.completed_at || run.updated_at;
    const cells = [
      when(run.created_at),
      runLabel(run),
      `${number(run.generated_chunks)}/${number(run.total_chunks)}`,
      number(run.pair_count),
      when(ended),
    ];
    if (withUsage) { cells.push(historyUsage(run) || "—"); }
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      td.dataset.label = RUN_LABELS[i];
      if (i === 1) { td.className = `status ${cancelled(run) ? "cancelled" : run.status}`; }
      if (i === 2 || i === 3) { td.className = "num"; }
      tr.append(td);
    });
    rows.push(tr);
    if (run.error_message) {
      const error = document.createElement("tr");
      error.className = cancelled(run) ? "run-error-row note" : "run-error-row";
      const td = document.createElement("td");
      td.colSpan = cells.length;
      td.textContent = run.error_message;
      error.append(td);
      rows.push(error);
    }
  }
  const table = $("runs");
  table.querySelector("th.usage").hidden = !withUsage;
  table.querySelector("tbody").replaceChildren(...rows);
  show("runs", runs.length > 0);
  show("runs-empty", runs.length === 0);
}

async function loadHistory() {
  const r = await api("GET", "/api/deep-memory/runs");
  if (r.ok) { renderHistory(r.data.runs); }
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
      // the run's card says where it stopped, once
      notice("");
      act(api("POST", "/api/deep-memory/cancel", { training_run_id: currentRunId() }), null, { quiet: true });
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
    act(api("PUT", "/api/deep-memory/settings", { enabled }), (s) => {
      // the change is this page's own: said here, not again as a change made elsewhere
      shownSettings = s;
      notice(enabled ? "Deep Memory is on: searches use the trained model."
        : "Deep Memory is off: searches use plain embeddings.");
    });
  });
  $("search-form").addEventListener("submit", search);
  setUpUploads();
  refresh();
  setInterval(poll, POLL_MS);
  // a tab shown again looks at once
  document.addEventListener("visibilitychange", () => { if (!document.hidden) { poll(); } });
});
