"use strict";
// The Deep Memory page: settings, the user's documents (list and upload), a search comparison,
// generation with a live progress bar (SSE), recovery of failed runs (Proceed / Delete),
// training, and the run history. Talks only to the gateway (/api/...), which authenticates
// by the session cookie. Each part has its own section below.

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

// the job a notice is about ("Resuming generation from chunk 10/21"): it goes when the job ends
let noticeJob = null;
// the notice of a settings read that failed for a while (503, 429), while it stands
let passing = null;

function notice(text, isError = false, jobId = null) {
  const el = $("notice");
  el.textContent = text || "";
  el.classList.toggle("error", Boolean(isError && text));
  noticeJob = jobId;
}

function show(id, visible) { $(id).hidden = !visible; }

const STATUS_LABELS = {
  generating: "Generating",
  generated: "Generated",
  training: "Training",
  completed: "Completed",
  generating_failed: "Generation failed",
  training_failed: "Training failed",
};

function statusLabel(status) { return STATUS_LABELS[status] || status.replaceAll("_", " "); }

function when(iso) {
  return iso ? new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }) : "—";
}


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
  trainedOnce = trained;
  show("enable-row", trained);
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

// One sentence a person reads: how often the right passage came first (and in the top 10)
// on searches held out of training, with and without the model. The local trainer reports
// queries like people's (plain_*) and held-out generated questions; others report the latter.
function gainSentence(m) {
  if (!m) { return ""; }
  const plain = m.plain_with_model && m.plain_without_model;
  const withModel = plain ? m.plain_with_model : m.with_model;
  const without = plain ? m.plain_without_model : m.without_model;
  if (!withModel || !without || typeof withModel["recall@1"] !== "number") { return ""; }
  const count = plain ? m.plain_queries : m.eval_queries;
  const what = plain ? "held-out searches like people's" : "held-out test questions";
  const pct = (x) => `${Math.round(x * 100)}%`;
  const top10 = typeof withModel["recall@10"] === "number"
    ? ` (in the top 10: ${pct(withModel["recall@10"])} against ${pct(without["recall@10"])})` : "";
  return `On ${count ? `${count} ` : ""}${what}, Deep Memory put the right passage first `
    + `${pct(withModel["recall@1"])} of the time, against ${pct(without["recall@1"])} `
    + `without it${top10}.`;
}

function renderLastTraining(run) {
  const metrics = run ? run.metrics : null;
  const sentence = gainSentence(metrics);
  const text = sentence || (metrics ? summarizeMetrics(metrics) : "");
  $("last-metrics").textContent = sentence || (text ? `Held-out ${text} (without → with Deep Memory)` : "");
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
    if (noticeJob === jobId) { notice(""); }
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
  if (!r.ok) {
    const said = r.data.detail || "Could not load the settings";
    notice(said, true);
    // a passing condition (a database not answering, too many streams open): look again,
    // and take the notice back once it passed
    if (r.status === 503 || r.status === 429 || r.status === 0) { passing = said; scheduleRecheck(); }
    return;
  }
  if (passing !== null && $("notice").textContent === passing) { notice(""); }
  passing = null;
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
  await Promise.all([loadDocuments(), loadHistory()]);
}

async function act(promise, onOk) {
  const r = await promise;
  if (r.ok) {
    if (r.data.message) { notice(r.data.message, false, r.data.job_id || null); }
    if (onOk) { onOk(r.data); }
  } else {
    notice(r.data.detail || `Request failed (${r.status})`, true);
  }
  await refresh();
}

function currentRunId() { return $("run-id").textContent; }

// ── Search ──────────────────────────────────────────────────────────────────────────────
// Works before any training: the plain column needs only documents; the Deep Memory column
// says in its place why it cannot search (no model, or the model was kept out).

const SNIPPET_CHARS = 280;
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

function renderResults(list, reply) {
  // a column that could not be searched says why in its place (no model yet, say)
  if (!reply.ok) {
    emptyResult(list, reply.data.detail || `Search failed (${reply.status})`, true);
    return;
  }
  // a score of 0 shares nothing with the question: not a result
  const hits = reply.data.results.filter((hit) => hit.score > 0);
  if (!hits.length) {
    emptyResult(list, "No passage shares anything with your question.", false);
    return;
  }
  list.replaceChildren(...hits.map((hit) => {
    const li = document.createElement("li");
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
      trainedOnce ? api("GET", `/api/deep-memory/search?${params(true)}`) : null,
    ]);
    renderResults($("results-plain"), plain);
    if (dm) { renderResults($("results-dm"), dm); }
    else { emptyResult($("results-dm"), UNTRAINED, false); }
  } finally {
    form.removeAttribute("aria-busy");
  }
}

// ── Documents: the list, and uploads from the file picker or a drop ─────────────────────────

const TEXT_SUFFIXES = [".txt", ".md", ".markdown", ".rst", ".text"];
// what a request may carry besides its documents (JSON keys, the user id the gateway adds)
const BODY_OVERHEAD = 1024;
const PER_DOCUMENT_OVERHEAD = 64;
// the service's own limit, from the documents listing; this until it is known
let maxBodyBytes = 1048576;
let uploading = false;
// a limit that still refuses after this many tries is reported, not waited on for ever
const UPLOAD_ATTEMPTS = 10;

// The size of `value` as JSON once the gateway forwards it: non-ASCII characters travel as
// \uXXXX escapes (six bytes for each UTF-16 unit).
function forwardedSize(value) {
  const json = JSON.stringify(value);
  let wide = 0;
  for (let i = 0; i < json.length; i += 1) { if (json.charCodeAt(i) > 127) { wide += 1; } }
  return json.length + 5 * wide;
}

// A text too large for one request, in parts that fit: whole paragraphs where they can,
// a paragraph too large on its own cut where it must.
function splitText(text, budget) {
  const paragraphs = text.split(/\n\s*\n/);
  const parts = [];
  let current = "";
  const push = () => { if (current.trim()) { parts.push(current); } current = ""; };
  for (const paragraph of paragraphs) {
    const joined = current ? `${current}\n\n${paragraph}` : paragraph;
    if (forwardedSize(joined) <= budget) { current = joined; continue; }
    push();
    if (forwardedSize(paragraph) <= budget) { current = paragraph; continue; }
    const step = Math.max(1, Math.floor(budget / 12));  // twelve bytes: the widest character
    for (let i = 0; i < paragraph.length; i += step) { parts.push(paragraph.slice(i, i + step)); }
  }
  push();
  return parts;
}

// Files → documents to send, and the files refused with why.
async function readFiles(files) {
  const documents = [];
  const refused = [];
  const budget = maxBodyBytes - BODY_OVERHEAD - PER_DOCUMENT_OVERHEAD;
  for (const file of files) {
    const name = file.name;
    const dot = name.lastIndexOf(".");
    const suffix = dot >= 0 ? name.slice(dot).toLowerCase() : "";
    if (!TEXT_SUFFIXES.includes(suffix)) {
      refused.push(`${name}: not a text file (${TEXT_SUFFIXES.join(" ")})`);
      continue;
    }
    let text;
    try { text = await file.text(); } catch (_) { refused.push(`${name}: could not be read`); continue; }
    if (text.includes("\u0000")) { refused.push(`${name}: not a text file (it holds NUL bytes)`); continue; }
    if (!text.trim()) { refused.push(`${name}: empty`); continue; }
    const parts = forwardedSize(text) + forwardedSize(name) <= budget ? [text] : splitText(text, budget - forwardedSize(name) - 32);
    parts.forEach((part, i) => {
      const title = parts.length > 1 ? `${name} (part ${i + 1} of ${parts.length})` : name;
      documents.push({ file: name, title, text: part, size: forwardedSize(part) + forwardedSize(title) });
    });
  }
  return { documents, refused };
}

// Documents packed into requests under the service's body limit.
function batches(documents) {
  const out = [];
  let batch = [];
  let size = BODY_OVERHEAD;
  for (const doc of documents) {
    const cost = doc.size + PER_DOCUMENT_OVERHEAD;
    if (batch.length && size + cost > maxBodyBytes) { out.push(batch); batch = []; size = BODY_OVERHEAD; }
    batch.push(doc);
    size += cost;
  }
  if (batch.length) { out.push(batch); }
  return out;
}

function retryAfterSeconds(header) {
  if (!header) { return 1; }
  const seconds = Number(header);
  if (Number.isFinite(seconds)) { return Math.max(0, seconds); }
  const date = Date.parse(header);
  return Number.isNaN(date) ? 1 : Math.max(0, (date - Date.now()) / 1000);
}

// One POST /api/documents with upload progress (fetch reports none).
function postDocuments(body, onProgress) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/documents");
    xhr.setRequestHeader("Content-Type", "application/json");
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
      data: { detail: "The service cannot be reached. Check your connection and try again." } });
    xhr.send(body);
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

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

async function upload(files) {
  if (uploading || !files.length) { return; }
  uploading = true;
  $("dropzone").classList.add("busy");
  try {
    const { documents, refused } = await readFiles([...files]);
    const groups = batches(documents);
    const bodies = groups.map((group) => JSON.stringify({
      documents: group.map(({ title, text }) => ({ title, text })), skip_unchanged: true }));
    const total = bodies.reduce((sum, body) => sum + body.length, 0) || 1;
    let sent = 0;
    let chunks = 0;
    const added = new Set();
    const unchanged = new Set();
    const fileCount = new Set(documents.map((d) => d.file)).size;
    show("upload-progress", groups.length > 0);
    uploadProgress(0);
    for (let i = 0; i < groups.length; i += 1) {
      let reply;
      for (let attempt = 1; ; attempt += 1) {
        uploadStatus(`Uploading ${plural(fileCount, "file", "files")}…`);
        reply = await postDocuments(bodies[i], (loaded) => {
          uploadProgress((sent + loaded) / total);
          if (loaded >= bodies[i].length) { uploadStatus("Reading and embedding the text…"); }
        });
        if ((reply.status !== 429 && reply.status !== 503) || attempt === UPLOAD_ATTEMPTS) { break; }
        // a limit on uploads (or a busy service) says when to come back: wait, then go on
        const wait = retryAfterSeconds(reply.retryAfter);
        const why = (reply.data.detail || "The service is busy").replace(/\.$/, "");
        uploadStatus(`${why}. Trying again in ${Math.ceil(wait)} s…`);
        await sleep(wait * 1000);
      }
      if (!reply.ok) {
        const before = added.size ? ` ${[...added].join(", ")} went in before it.` : "";
        uploadStatus(`Upload failed: ${reply.data.detail || `error ${reply.status}`}.${before}`, true);
        if (added.size) { await refresh(); }
        return;
      }
      sent += bodies[i].length;
      uploadProgress(sent / total);
      chunks += reply.data.chunks;
      const skipped = new Set(reply.data.skipped || []);
      groups[i].forEach((doc, j) => { (skipped.has(j) ? unchanged : added).add(doc.file); });
    }
    [...added].forEach((file) => unchanged.delete(file));
    const said = [];
    if (added.size) { said.push(`Added ${[...added].join(", ")} (${plural(chunks, "chunk", "chunks")}).`); }
    if (unchanged.size) { said.push(`Already there, unchanged: ${[...unchanged].join(", ")}.`); }
    if (refused.length) { said.push(`Not added: ${refused.join("; ")}.`); }
    uploadStatus(said.join(" "), Boolean(refused.length) && !added.size && !unchanged.size);
    if (groups.length) { await refresh(); }
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
    const cells = [doc.title || "(untitled)", String(doc.chunk_count), when(doc.created_at)];
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
  if (n > rows.length) { summary += ` The newest ${rows.length} are listed.`; }
  $("documents-summary").textContent = summary;
}

async function loadDocuments() {
  const r = await api("GET", "/api/documents");
  if (!r.ok) { $("documents-summary").textContent = r.data.detail || "Could not load the documents"; return; }
  maxBodyBytes = r.data.max_body_bytes || maxBodyBytes;
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
      statusLabel(run.status),
      `${run.generated_chunks}/${run.total_chunks}`,
      String(run.pair_count),
      when(ended),
    ];
    if (withUsage) { cells.push(historyUsage(run) || "—"); }
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      td.dataset.label = RUN_LABELS[i];
      if (i === 1) { td.className = `status ${run.status}`; }
      if (i === 2 || i === 3) { td.className = "num"; }
      tr.append(td);
    });
    rows.push(tr);
    if (run.error_message) {
      const error = document.createElement("tr");
      error.className = "run-error-row";
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
  setUpUploads();
  refresh();
});
