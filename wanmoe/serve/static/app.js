// The web page of `wanmoe serve`: plain JavaScript against the HTTP API (docs/serve.md), no
// framework, no build step, nothing loaded from outside this server.
"use strict";

(function () {
  const TOKEN_KEY = "wanmoe.token";
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  // Browsers open at most 6 HTTP/1.1 connections per host and every EventSource holds one, so
  // only this many jobs are followed by Server-Sent Events; the others by polling GET /v1/jobs.
  const MAX_STREAMS = 3;
  const FIELDS = ["prompt", "negative_prompt", "preset", "size", "frames", "steps", "seed",
                  "shift", "guide_scale", "solver"];
  // How a 422 message names each field ("frames 4 is not of the form 4n+1", "guide scale ...").
  const FIELD_WORDS = {
    negative_prompt: ["negative_prompt", "negative prompt", "negative-prompt"],
    prompt: ["prompt"],
    preset: ["preset"],
    size: ["size", "width", "height"],
    frames: ["frames", "frame"],
    steps: ["steps", "step"],
    seed: ["seed"],
    shift: ["shift"],
    guide_scale: ["guide_scale", "guide scale", "guide-scale"],
    solver: ["solver"],
  };
  const KNOWN_SOLVERS = ["unipc", "dpm++", "euler", "euler-lightning"];

  const $ = (id) => document.getElementById(id);
  const state = {
    token: localStorage.getItem(TOKEN_KEY) || "",
    model: null,
    vocabulary: null,       // Set of lower-case words, demo model only
    jobs: new Map(),        // id -> job JSON
    streams: new Map(),     // id -> EventSource
    blobs: new Map(),       // id -> object URL of the MP4 (only when a token is needed)
    selected: null,         // id of the job in the player
    pollTimer: null,
    needToken: false,
    checkSupported: null,   // does the server have POST /v1/check?
  };

  // ------------------------------------------------------------------------------------------
  // HTTP

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error) || ("HTTP " + status));
      this.status = status;
      this.body = body || {};
    }
  }

  // Seeds go up to 2^63 - 1, past JavaScript's exact integers (2^53): they are read as strings
  // of digits and sent back as JSON numbers written from those digits.
  const BIG = "\u0000int:";

  function parseJSON(text) {
    // (not after a backslash: a prompt may contain the text "seed": 12345...)
    return JSON.parse(text.replace(/(^|[^\\])("seed"\s*:\s*)(-?\d{16,})/g, '$1$2"$3"'));
  }

  function toJSON(body) {
    return JSON.stringify(body).replace(/"\\u0000int:(-?\d+)"/g, "$1");
  }

  async function api(method, path, body) {
    const headers = {};
    if (state.token) headers["Authorization"] = "Bearer " + state.token;
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = toJSON(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      setConnection("server unreachable");
      throw e;
    }
    setConnection("");
    let data = null;
    const text = await resp.text();
    if (text) {
      try { data = parseJSON(text); } catch (e) { data = { error: text.slice(0, 300) }; }
    }
    if (resp.status === 401) {
      askForToken(state.token ? "The server refused this token." : "");
      throw new ApiError(401, data);
    }
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  function setConnection(text) {
    $("connection").textContent = text;
  }

  // ------------------------------------------------------------------------------------------
  // token

  function askForToken(message) {
    state.needToken = true;
    const form = $("token-form");
    form.hidden = false;
    $("token-error").textContent = message || "";
    $("token-input").focus();
  }

  function setupToken() {
    $("token-button").addEventListener("click", () => {
      const form = $("token-form");
      form.hidden = !form.hidden;
      if (!form.hidden) $("token-input").focus();
    });
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = $("token-input").value.trim();
      if (!value) {
        $("token-error").textContent = "Enter the token the server was started with.";
        return;
      }
      state.token = value;
      localStorage.setItem(TOKEN_KEY, value);
      $("token-input").value = "";
      $("token-form").hidden = true;
      state.needToken = false;
      restart();
    });
    $("token-clear").addEventListener("click", () => {
      state.token = "";
      localStorage.removeItem(TOKEN_KEY);
      $("token-error").textContent = "Token forgotten.";
    });
  }

  // ------------------------------------------------------------------------------------------
  // model panel and form defaults

  function fmt(value) {
    if (value === null || value === undefined) return "";
    if (Array.isArray(value)) return value.join(", ");
    return String(value);
  }

  function renderModel(model) {
    state.model = model;
    $("model-name").textContent = model.model + (model.demo ? " (demo model)" : "");
    const d = model.defaults || {};
    const lim = model.limits || {};

    // presets: "official" is always there (= no preset); others only when the server lists them
    const sel = $("preset");
    const current = sel.value;
    sel.textContent = "";
    sel.appendChild(new Option("official", ""));
    for (const name of model.presets || []) {
      if (name === "official") continue;
      sel.appendChild(new Option(name, name));
    }
    sel.value = [...sel.options].some((o) => o.value === current) ? current : "";

    const sizes = $("size-list");
    sizes.textContent = "";
    for (const s of model.sizes || []) sizes.appendChild(new Option(s));

    const solvers = model.solvers || KNOWN_SOLVERS;
    let solverList = $("solver-list");
    if (!solverList) {
      solverList = document.createElement("datalist");
      solverList.id = "solver-list";
      $("solver").setAttribute("list", "solver-list");
      $("solver").after(solverList);
    }
    solverList.textContent = "";
    for (const s of solvers) solverList.appendChild(new Option(s));

    // fields stay empty (= the model's default, or the preset's) with the default shown
    $("size").placeholder = fmt(d.size);
    $("frames").placeholder = fmt(d.frames);
    showSamplingDefaults();
    if (d.negative_prompt) $("negative_prompt-hint").title = d.negative_prompt;
    if (lim.prompt_chars) $("prompt").maxLength = lim.prompt_chars;

    let sizeLimit = lim.size_multiple ? " · sides multiples of " + lim.size_multiple : "";
    if (lim.max_pixels) sizeLimit += " · at most " + lim.max_pixels.toLocaleString("en") + " pixels";
    else if (lim.max_width || lim.max_height) {
      sizeLimit += " · at most " + (lim.max_width || "?") + "*" + (lim.max_height || "?");
    }
    $("size-hint").textContent = "default " + fmt(d.size) + sizeLimit;
    $("frames-hint").textContent = "default " + fmt(d.frames) + " · 4n+1" +
      (lim.max_frames ? " · at most " + lim.max_frames : "");
    $("steps-hint").textContent = "default " + fmt(d.steps) +
      (lim.max_steps ? " · at most " + lim.max_steps : "");
    $("shift-hint").textContent = "default " + fmt(d.shift);
    $("guide_scale-hint").textContent = "default " + fmt(d.guide_scale) +
      " · one number, or HIGH,LOW for the two experts";
    $("solver-hint").textContent = "default " + fmt(d.solver);

    const info = $("model-info");
    info.textContent = "";
    const add = (k, v) => {
      if (v === "" || v === undefined || v === null) return;
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      info.append(dt, dd);
    };
    add("model", model.model);
    add("kind", model.demo ? "built-in demo model" : "checkpoint");
    if (Array.isArray(model.experts)) add("experts", model.experts.join(", "));
    add("size", fmt(d.size));
    add("frames", fmt(d.frames) + (d.fps ? " at " + d.fps + " fps" : ""));
    add("steps", fmt(d.steps));
    add("shift", fmt(d.shift));
    add("guide scale", fmt(d.guide_scale));
    add("solver", fmt(d.solver));
    add("presets", ["official"].concat((model.presets || []).filter((p) => p !== "official")).join(", "));
    if (lim.prompt_chars) add("prompt limit", lim.prompt_chars + " characters");
    if (lim.queue) add("queue limit", lim.queue + " queued jobs");
    if (Array.isArray(model.devices) && model.devices.length) add("devices", model.devices.join(", "));
    info.querySelectorAll("dd").forEach((dd, i) => { dd.id = "model-value-" + i; });

    const vocab = model.vocabulary;
    if (Array.isArray(vocab) && vocab.length) {
      state.vocabulary = new Set(vocab.map((w) => String(w).toLowerCase()));
      const ul = $("vocabulary");
      ul.textContent = "";
      for (const w of [...vocab].sort()) {
        const li = document.createElement("li");
        li.textContent = w;
        ul.appendChild(li);
      }
      $("vocabulary-box").hidden = false;
    } else {
      state.vocabulary = null;
      $("vocabulary-box").hidden = true;
    }
    updateUnknownWords();
  }

  // A preset sets the sampling values (steps, shift, guide scale, solver) that are left empty.
  function showSamplingDefaults() {
    const d = (state.model && state.model.defaults) || {};
    const preset = $("preset").value;
    for (const f of ["steps", "shift", "guide_scale", "solver"]) {
      $(f).placeholder = preset ? "set by " + preset : fmt(d[f]);
    }
    $("preset-hint").textContent = preset
      ? preset + ": its own sampling values fill the empty fields below"
      : "official: the model's own sampling settings";
  }

  function promptWords(text) {
    return (text.toLowerCase().match(/[\p{L}\p{N}]+/gu) || []);
  }

  // The live note under the prompt: the server's own check (POST /v1/check, the warnings that
  // POST /v1/jobs would give, nothing queued), 300 ms after the last key. A server without
  // that route gets a rougher local check against the vocabulary list.
  let checkSeq = 0;
  let checkTimer = null;

  function updateUnknownWords() {
    if (checkTimer) clearTimeout(checkTimer);
    checkTimer = setTimeout(checkPrompt, 300);
  }

  function localUnknownNote(prompt) {
    const unknown = [];
    for (const w of promptWords(prompt)) {
      if (!state.vocabulary.has(w) && !unknown.includes(w)) unknown.push(w);
    }
    return unknown.length ? "the demo model does not know the word(s) " + unknown.join(", ") : "";
  }

  async function checkPrompt() {
    checkTimer = null;
    const note = $("prompt-unknown");
    const prompt = $("prompt").value;
    const seq = ++checkSeq;
    if (!state.model || !state.model.demo || !prompt.trim()) {
      note.textContent = "";
      return;
    }
    if (state.checkSupported === false) {
      note.textContent = state.vocabulary ? localUnknownNote(prompt) : "";
      return;
    }
    try {
      const res = await api("POST", "/v1/check", { prompt });
      if (seq !== checkSeq) return;
      note.textContent = ((res && res.warnings) || []).join(" ");
      state.checkSupported = true;
    } catch (e) {
      if (seq !== checkSeq) return;
      if (e instanceof ApiError && (e.status === 404 || e.status === 405)) {
        state.checkSupported = false;
        note.textContent = state.vocabulary ? localUnknownNote(prompt) : "";
      } else if (e instanceof ApiError && e.status === 422 && fieldOfError(e.body) === "prompt") {
        note.textContent = "";
        showFieldError("prompt", e.message);
      }
    }
  }

  // ------------------------------------------------------------------------------------------
  // the form

  function clearErrors() {
    for (const f of FIELDS) {
      const el = $(f + "-error");
      if (el) el.textContent = "";
      const input = $(f);
      if (input) input.removeAttribute("aria-invalid");
      const box = input && input.closest(".field");
      if (box) box.classList.remove("invalid");
    }
    $("form-error").textContent = "";
  }

  // The field a 422 message is about: the server's own "field" key if it sends one, else the
  // field whose name comes first in the message.
  function fieldOfError(body) {
    if (body && typeof body.field === "string") {
      const f = body.field.replace(/-/g, "_");
      if (FIELDS.includes(f)) return f;
      if (f === "width" || f === "height") return "size";
      if (f === "loras") return null;
    }
    const msg = String((body && body.error) || "").toLowerCase();
    let best = null;
    let bestAt = Infinity;
    for (const [field, words] of Object.entries(FIELD_WORDS)) {
      for (const w of words) {
        const re = new RegExp("(^|[^a-z_])(--)?" + w.replace(/[-+]/g, "\\$&") + "(?![a-z_])");
        const m = re.exec(msg);
        if (m && m.index < bestAt) { best = field; bestAt = m.index; }
      }
    }
    return best;
  }

  function showFieldError(field, message) {
    const el = field && $(field + "-error");
    if (!el) {
      $("form-error").textContent = message;
      return;
    }
    if (["shift", "guide_scale", "solver"].includes(field)) $("advanced").open = true;
    el.textContent = message;
    const input = $(field);
    input.setAttribute("aria-invalid", "true");
    input.closest(".field").classList.add("invalid");
  }

  function readForm() {
    const body = {};
    const text = (id) => $(id).value.trim();
    body.prompt = $("prompt").value;
    if (text("negative_prompt")) body.negative_prompt = $("negative_prompt").value;
    if (text("preset")) body.preset = text("preset");
    if (text("size")) body.size = text("size");
    // numbers go as numbers when they parse, else as typed: the server names the bad value
    const num = (id) => {
      const raw = $(id).value.trim();
      if (raw === "") return undefined;
      if (/^-?\d+$/.test(raw) && !Number.isSafeInteger(Number(raw))) return BIG + raw;
      const n = Number(raw);
      return Number.isFinite(n) ? n : raw;
    };
    for (const id of ["frames", "steps", "seed", "shift"]) {
      const v = num(id);
      if (v !== undefined) body[id] = v;
    }
    const g = text("guide_scale");
    if (g) {
      const parts = g.split(",").map((s) => s.trim());
      const nums = parts.map(Number);
      if (parts.length === 2 && nums.every(Number.isFinite)) body.guide_scale = nums;
      else if (parts.length === 1 && Number.isFinite(nums[0])) body.guide_scale = nums[0];
      else body.guide_scale = g;
    }
    if (text("solver")) body.solver = text("solver");
    return body;
  }

  async function submitJob(ev) {
    ev.preventDefault();
    clearErrors();
    $("warnings").textContent = "";
    const body = readForm();
    const button = $("submit");
    button.disabled = true;
    $("submit-status").textContent = "submitting…";
    try {
      const job = await api("POST", "/v1/jobs", body);
      $("submit-status").textContent = "queued as " + job.id.slice(0, 8);
      for (const w of job.warnings || []) {
        const li = document.createElement("li");
        li.textContent = w;
        $("warnings").appendChild(li);
      }
      upsertJob(job);
      follow(job.id, true);
    } catch (e) {
      $("submit-status").textContent = "";
      if (e instanceof ApiError && e.status === 422) {
        showFieldError(fieldOfError(e.body), e.message);
      } else if (e instanceof ApiError && e.status === 429) {
        $("form-error").textContent = e.message + " (queue full; try again when a job finished)";
      } else if (!(e instanceof ApiError && e.status === 401)) {
        $("form-error").textContent = String(e.message || e);
      }
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------------------------------------
  // the queue

  function jobText(job) {
    const p = job.progress || {};
    const steps = p.steps || (job.request && job.request.steps) || 0;
    const step = p.step || 0;
    return { step, steps };
  }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function renderJob(job) {
    const id = job.id;
    let li = $("job-" + id);
    if (!li) {
      li = el("li", { id: "job-" + id, class: "job" });
      const head = el("div", { class: "job-head" });
      head.append(
        el("span", { id: "state-" + id, class: "state" }),
        el("span", { id: "prompt-" + id, class: "job-prompt" }),
      );
      const bar = el("progress", { id: "progress-" + id, max: "1", value: "0",
                                   "aria-label": "progress of job " + id.slice(0, 8) });
      const line = el("div", { class: "job-line" });
      line.append(
        el("span", { id: "steps-" + id, class: "job-steps" }),
        el("span", { id: "expert-" + id, class: "expert" }),
        el("span", { id: "meta-" + id, class: "job-meta" }),
      );
      const buttons = el("div", { class: "job-buttons" });
      const play = el("button", { type: "button", id: "play-" + id, class: "play",
                                  "aria-label": "play job " + id.slice(0, 8), hidden: "" }, "Play");
      play.addEventListener("click", () => select(id));
      const cancel = el("button", { type: "button", id: "cancel-" + id, class: "cancel",
                                    "aria-label": "cancel job " + id.slice(0, 8) }, "Cancel");
      cancel.addEventListener("click", () => cancelJob(id));
      buttons.append(play, cancel);
      const err = el("p", { id: "error-" + id, class: "job-error", role: "alert" });
      li.append(head, bar, line, buttons, err);
      insertSorted($("queue"), li, job.created || 0);
    }
    li.dataset.state = job.state;
    li.dataset.created = job.created || 0;
    const req = job.request || {};
    $("state-" + id).textContent = job.state;
    $("state-" + id).className = "state state-" + job.state;
    $("prompt-" + id).textContent = req.prompt || "";
    $("prompt-" + id).title = req.prompt || "";
    const { step, steps } = jobText(job);
    const bar = $("progress-" + id);
    bar.max = Math.max(steps, 1);
    bar.value = job.state === "succeeded" ? bar.max : Math.min(step, bar.max);
    $("steps-" + id).textContent = steps ? "step " + step + "/" + steps : "";
    // the active expert: only while the job runs
    const expert = (job.state === "running" && job.progress && job.progress.expert) || "";
    $("expert-" + id).textContent = expert ? "expert: " + expert : "";
    $("expert-" + id).dataset.expert = expert;
    const meta = [];
    if (job.seed !== undefined && job.seed !== null) meta.push("seed " + job.seed);
    if (req.size) meta.push(req.size);
    if (req.frames) meta.push(req.frames + " frames");
    if (job.started && job.finished) meta.push(((job.finished - job.started)).toFixed(1) + " s");
    $("meta-" + id).textContent = meta.join(" · ");
    $("cancel-" + id).hidden = TERMINAL.has(job.state);
    $("play-" + id).hidden = !(job.state === "succeeded" && job.video_url);
    $("error-" + id).textContent = job.error || "";
    $("queue-empty").hidden = $("queue").children.length > 0;
  }

  function insertSorted(list, item, created) {
    // newest first
    for (const child of list.children) {
      if (Number(child.dataset.created || 0) < created) {
        list.insertBefore(item, child);
        return;
      }
    }
    list.appendChild(item);
  }

  function upsertJob(job) {
    const old = state.jobs.get(job.id);
    state.jobs.set(job.id, job);
    renderJob(job);
    if (job.state === "succeeded" && job.video_url && !(old && old.state === "succeeded")) {
      addToGallery(job);
      if (!state.selected || state.autoSelect === job.id) select(job.id);
    }
    if (TERMINAL.has(job.state)) stopFollowing(job.id);
  }

  function follow(id, auto) {
    if (auto) state.autoSelect = id;
    if (state.streams.has(id) || state.streams.size >= MAX_STREAMS) {
      schedulePoll(1000);
      return;
    }
    const q = state.token ? "?token=" + encodeURIComponent(state.token) : "";
    const es = new EventSource("/v1/jobs/" + id + "/events" + q);
    state.streams.set(id, es);
    const onJob = (ev) => {
      try { upsertJob(parseJSON(ev.data)); } catch (e) { /* ignore a malformed event */ }
    };
    es.addEventListener("progress", onJob);
    es.addEventListener("done", (ev) => {
      onJob(ev);
      stopFollowing(id);
      schedulePoll(200);  // follow the next queued job
    });
    es.addEventListener("error", () => {
      // the stream broke (server restarted, token refused, ...): fall back to polling
      if (es.readyState === EventSource.CLOSED) {
        stopFollowing(id);
        schedulePoll(1000);
      }
    });
  }

  function stopFollowing(id) {
    const es = state.streams.get(id);
    if (es) {
      es.close();
      state.streams.delete(id);
    }
  }

  async function cancelJob(id) {
    const button = $("cancel-" + id);
    button.disabled = true;
    try {
      upsertJob(await api("DELETE", "/v1/jobs/" + id));
    } catch (e) {
      $("error-" + id).textContent = "cancel failed: " + e.message;
    } finally {
      button.disabled = false;
    }
    schedulePoll(1000);
  }

  async function refreshJobs() {
    const data = await api("GET", "/v1/jobs?limit=50");
    const jobs = (data && data.jobs) || [];
    for (const job of jobs) upsertJob(job);  // newest first: the newest finished one plays
    // follow active jobs: running ones first, then the oldest queued
    const active = jobs.filter((j) => !TERMINAL.has(j.state));
    active.sort((a, b) => (a.state === "running" ? 0 : 1) - (b.state === "running" ? 0 : 1) ||
                          (a.created || 0) - (b.created || 0));
    for (const job of active) {
      if (state.streams.size >= MAX_STREAMS) break;
      if (!state.streams.has(job.id)) follow(job.id, false);
    }
    return active.length;
  }

  function schedulePoll(ms) {
    if (state.pollTimer) clearTimeout(state.pollTimer);
    state.pollTimer = setTimeout(poll, ms);
  }

  async function poll() {
    state.pollTimer = null;
    if (state.needToken) return;
    let active = 0;
    try {
      active = await refreshJobs();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return;
    }
    // quick while something is queued or running and not followed by a stream
    const unfollowed = active > state.streams.size;
    schedulePoll(unfollowed ? 1500 : 5000);
  }

  // ------------------------------------------------------------------------------------------
  // player and gallery

  // With a token the <video> element cannot send the Authorization header: fetch the MP4 and
  // play it from a blob URL. Without one, play from the server (range requests, no copy).
  async function videoSrc(job) {
    if (!state.token) return job.video_url;
    if (state.blobs.has(job.id)) return state.blobs.get(job.id);
    const resp = await fetch(job.video_url, { headers: { Authorization: "Bearer " + state.token } });
    if (resp.status === 401) { askForToken("The server refused this token."); throw new Error("401"); }
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    const url = URL.createObjectURL(await resp.blob());
    state.blobs.set(job.id, url);
    return url;
  }

  async function select(id) {
    const job = state.jobs.get(id);
    if (!job || !job.video_url) return;
    state.selected = id;
    state.autoSelect = null;
    document.querySelectorAll(".job.selected, .gallery-item.selected")
      .forEach((e) => e.classList.remove("selected"));
    const li = $("job-" + id);
    if (li) li.classList.add("selected");
    const g = $("gallery-" + id);
    if (g) g.classList.add("selected");
    const player = $("player");
    try {
      const src = await videoSrc(job);
      if (state.selected !== id) return;
      player.src = src;
      player.dataset.job = id;
      const dl = $("download");
      dl.href = src;
      dl.download = id + ".mp4";
      dl.hidden = false;
      $("player-caption").textContent = (job.request && job.request.prompt || "") +
        " — seed " + job.seed;
      const p = player.play();
      if (p && p.catch) p.catch(() => { /* autoplay refused: the controls are there */ });
    } catch (e) {
      $("player-caption").textContent = "could not load the video: " + e.message;
    }
  }

  async function addToGallery(job) {
    if ($("gallery-" + job.id)) return;
    const li = el("li", { id: "gallery-" + job.id, class: "gallery-item" });
    li.dataset.created = job.created || 0;
    const button = el("button", { type: "button", class: "gallery-button",
                                  "aria-label": "show video of job " + job.id.slice(0, 8) +
                                                ": " + ((job.request && job.request.prompt) || "") });
    const thumb = el("video", { muted: "", preload: "metadata", playsinline: "",
                                class: "thumb", "aria-hidden": "true" });
    thumb.muted = true;
    const cap = el("span", { class: "caption" }, (job.request && job.request.prompt) || job.id);
    button.append(thumb, cap);
    button.addEventListener("click", () => select(job.id));
    button.addEventListener("mouseenter", () => { const p = thumb.play(); if (p) p.catch(() => {}); });
    button.addEventListener("mouseleave", () => { thumb.pause(); });
    li.appendChild(button);
    insertSorted($("gallery"), li, job.created || 0);
    $("gallery-empty").hidden = true;
    try { thumb.src = await videoSrc(job); } catch (e) { /* the caption still links it */ }
  }

  // ------------------------------------------------------------------------------------------
  // start-up

  async function restart() {
    for (const id of [...state.streams.keys()]) stopFollowing(id);
    try {
      renderModel(await api("GET", "/v1/model"));
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) {
        $("model-name").textContent = "could not load /v1/model: " + e.message;
      }
      return;
    }
    poll();
  }

  function start() {
    setupToken();
    $("job-form").addEventListener("submit", submitJob);
    $("prompt").addEventListener("input", updateUnknownWords);
    $("preset").addEventListener("change", showSamplingDefaults);
    for (const f of FIELDS) {
      const input = $(f);
      if (!input) continue;
      input.addEventListener("input", () => {
        const err = $(f + "-error");
        if (err && err.textContent) {
          err.textContent = "";
          input.removeAttribute("aria-invalid");
          input.closest(".field").classList.remove("invalid");
        }
      });
    }
    restart();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
