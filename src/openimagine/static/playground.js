// openimagine playground: plain JavaScript against the same origin's /v1 API.
// Nothing here is fetched from elsewhere; user text only ever goes into the
// page through textContent (never innerHTML).
"use strict";

(() => {
  const KEY_STORAGE = "openimagine.apiKey";
  const TASKS_STORAGE = "openimagine.tasks";
  const MIN_POLL_MS = 1500;
  const MAX_TASKS = 30;
  const MAX_IMAGES = 7;

  const $ = (id) => document.getElementById(id);
  const els = {
    keyForm: $("key-form"),
    key: $("api-key"),
    forgetKey: $("forget-key"),
    plan: $("account-plan"),
    balance: $("account-balance"),
    form: $("generate-form"),
    prompt: $("prompt"),
    imageUrls: $("image-urls"),
    imageFiles: $("image-files"),
    previews: $("image-previews"),
    submit: $("submit"),
    price: $("price"),
    error: $("error"),
    tasks: $("tasks"),
    empty: $("tasks-empty"),
    clear: $("clear-tasks"),
    template: $("task-template"),
  };

  /** An API error: the envelope's message, its HTTP status and error code. */
  class ApiError extends Error {
    constructor(message, status, code, retryAfter) {
      super(message);
      this.status = status;
      this.code = code || null;
      this.retryAfter = retryAfter || null;
    }
  }

  // ---- storage (localStorage may be unavailable: private modes, policies) ----

  function load(name, fallback) {
    try {
      const value = localStorage.getItem(name);
      return value === null ? fallback : JSON.parse(value);
    } catch (_) {
      return fallback;
    }
  }

  function store(name, value) {
    try {
      if (value === null) localStorage.removeItem(name);
      else localStorage.setItem(name, JSON.stringify(value));
    } catch (_) { /* not kept; the page still works */ }
  }

  let apiKey = load(KEY_STORAGE, "") || "";
  let account = null;
  const tasks = new Map(); // task_id -> {id, prompt, mode, ratio, data, el, videos}
  let pickedFiles = []; // [{name, dataUrl}]

  // ---- the API ----

  async function api(method, path, body) {
    if (!apiKey) throw new ApiError("Paste your API key first.", 0, "NO_KEY");
    const headers = { Authorization: `Bearer ${apiKey}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (_) {
      throw new ApiError("Cannot reach the server. Is it running?", 0, "NETWORK");
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch (_) { /* not JSON: described below from the status */ }
    const code = payload && typeof payload.code === "number" ? payload.code : response.status;
    if (!response.ok || code >= 400) {
      const retryAfter = Number(response.headers.get("Retry-After")) || null;
      let message = payload && typeof payload.message === "string" && payload.message
        ? payload.message
        : `HTTP ${response.status} ${response.statusText}`.trim();
      if (code === 429 && retryAfter) message += ` (try again in ${retryAfter} s)`;
      throw new ApiError(message, code, payload && payload.error, retryAfter);
    }
    return (payload && payload.data) || {};
  }

  // ---- messages ----

  let errorFromPolling = false;

  function showError(message, { fromPolling = false } = {}) {
    els.error.replaceChildren();
    const label = document.createElement("strong");
    label.textContent = "Error";
    els.error.append(label, document.createTextNode(message));
    els.error.hidden = false;
    errorFromPolling = fromPolling;
  }

  function hideError() {
    els.error.hidden = true;
    els.error.replaceChildren();
    errorFromPolling = false;
  }

  // ---- account ----

  function formatNumber(value) {
    return typeof value === "number" ? value.toLocaleString() : "—";
  }

  function renderAccount() {
    els.balance.replaceChildren();
    if (!apiKey) {
      els.plan.hidden = true;
      els.balance.textContent = "No key yet";
      els.price.textContent = "";
      return;
    }
    if (!account) {
      els.plan.hidden = true;
      els.balance.textContent = "Key saved";
      return;
    }
    els.plan.textContent = account.plan || "";
    els.plan.hidden = !account.plan;
    const amount = document.createElement("strong");
    amount.textContent = formatNumber(account.balance);
    els.balance.append(amount, document.createTextNode(" credits"));
    const rpm = account.rate_limit && account.rate_limit.requests_per_minute;
    if (rpm) els.balance.append(document.createTextNode(` · ${formatNumber(rpm)} req/min`));
    els.price.textContent = typeof account.price === "number"
      ? `Costs ${formatNumber(account.price)} credits` : "";
  }

  async function refreshAccount({ mergeRecent = false } = {}) {
    try {
      account = await api("GET", "/v1/account");
    } catch (err) {
      account = null;
      renderAccount();
      // A server without /v1/account (e.g. the hosted API) is fine: 404 is quiet.
      if (err.status !== 404 && err.code !== "NO_KEY") showError(err.message);
      return;
    }
    renderAccount();
    if (mergeRecent && account.usage && Array.isArray(account.usage.recent_tasks)) {
      for (const recent of account.usage.recent_tasks) {
        if (!tasks.has(recent.task_id)) addTask({ id: recent.task_id }, { front: false });
      }
      saveTasks();
      schedulePoll(0);
    }
  }

  // ---- tasks ----

  function saveTasks() {
    store(TASKS_STORAGE, [...tasks.values()].slice(0, MAX_TASKS).map((t) => ({
      id: t.id, prompt: t.prompt || null, mode: t.mode || null, ratio: t.ratio || null,
    })));
  }

  function isDone(entry) {
    return !!entry.data && (entry.data.status === "completed" || entry.data.status === "failed");
  }

  function addTask(info, { front }) {
    const el = els.template.content.firstElementChild.cloneNode(true);
    const entry = { ...info, data: null, el, videos: false, streaming: false };
    const cancelButton = el.querySelector(".task-cancel");
    cancelButton.setAttribute("aria-label", "Cancel this task");
    cancelButton.addEventListener("click", () => cancelTask(entry));
    tasks.set(info.id, entry);
    if (front) els.tasks.prepend(el);
    else els.tasks.append(el);
    while (tasks.size > MAX_TASKS) {
      const oldest = [...tasks.values()].pop();
      oldest.el.remove();
      tasks.delete(oldest.id);
    }
    renderTask(entry);
    els.empty.hidden = tasks.size > 0;
    return entry;
  }

  function formatTime(iso) {
    const date = iso ? new Date(iso) : null;
    if (!date || Number.isNaN(date.getTime())) return null;
    const sameDay = date.toDateString() === new Date().toDateString();
    return sameDay
      ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : date.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
  }

  function renderTask(entry) {
    const data = entry.data || {};
    const request = data.request || {};
    const status = entry.missing ? "unknown" : data.status || "pending";
    const el = entry.el;
    el.className = `task ${status}`;
    el.dataset.taskId = entry.id;
    el.querySelector(".task-prompt").textContent = request.prompt || entry.prompt || entry.id;
    const badge = el.querySelector(".badge");
    badge.textContent = status;
    badge.className = `badge ${status}`;
    const meta = [request.mode || entry.mode, request.ratio || entry.ratio, formatTime(data.created_at)];
    if (typeof data.consumed_credits === "number") meta.push(`${data.consumed_credits} credits`);
    meta.push(entry.id);
    el.querySelector(".task-meta").textContent = meta.filter(Boolean).join(" · ");
    const progress = el.querySelector(".task-progress");
    const percent = Math.max(0, Math.min(100, Number(data.progress) || 0));
    progress.value = percent;
    progress.setAttribute("aria-label", `Progress: ${percent}%`);
    el.querySelector(".task-cancel").hidden = entry.missing || !entry.data || isDone(entry);
    const error = el.querySelector(".task-error");
    if (entry.missing) {
      error.textContent = "This task is not found with the current key.";
      error.hidden = false;
    } else if (status === "failed") {
      const refunded = data.consumed_credits === 0 ? " Credits refunded." : "";
      error.textContent = `${data.error_message || "The task failed."}${refunded}`;
      error.hidden = false;
    } else {
      error.hidden = true;
    }
    if (status === "completed" && !entry.videos && Array.isArray(data.response)) {
      renderVideos(entry, data.response);
    }
  }

  function renderVideos(entry, urls) {
    const box = entry.el.querySelector(".videos");
    box.replaceChildren();
    urls.forEach((url, index) => {
      const figure = document.createElement("figure");
      figure.className = "video";
      const video = document.createElement("video");
      video.controls = true;
      video.playsInline = true;
      video.setAttribute("playsinline", "");
      video.muted = true;
      video.loop = true;
      video.autoplay = true;
      video.preload = "auto";
      video.src = url;
      video.setAttribute("aria-label", `Video ${index + 1} of ${urls.length}`);
      // Signed URLs expire: on a load error, ask for fresh ones (once).
      video.addEventListener("error", () => refreshUrl(entry, video, index), { once: true });
      const caption = document.createElement("figcaption");
      const label = document.createElement("span");
      label.textContent = `Variation ${index + 1}`;
      const link = document.createElement("a");
      link.href = url;
      link.download = `${entry.id}-${index + 1}.mp4`;
      link.textContent = "Download";
      caption.append(label, link);
      figure.append(video, caption);
      box.append(figure);
    });
    entry.videos = true;
  }

  async function refreshUrl(entry, video, index) {
    try {
      const data = await api("GET", `/v1/status?task_id=${encodeURIComponent(entry.id)}`);
      const url = data.response && data.response[index];
      if (url && url !== video.src) {
        video.src = url;
        const link = video.parentElement.querySelector("a");
        if (link) link.href = url;
      }
    } catch (err) {
      showError(err.message);
    }
  }

  // ---- polling (one loop; slower when many tasks run, to stay under the plan's limit) ----

  let pollTimer = null;

  function pollDelay(active) {
    const rpm = account && account.rate_limit && account.rate_limit.requests_per_minute;
    // Use at most half the plan's requests per minute for polling.
    return rpm ? Math.max(MIN_POLL_MS, Math.ceil((60000 * active) / (rpm / 2))) : MIN_POLL_MS;
  }

  function schedulePoll(delay) {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, delay);
  }

  async function cancelTask(entry) {
    const button = entry.el.querySelector(".task-cancel");
    button.disabled = true;
    try {
      entry.data = await api("POST", "/v1/cancel", { task_id: entry.id });
      renderTask(entry);
      refreshAccount();
    } catch (err) {
      showError(err.message);
    } finally {
      button.disabled = false;
    }
  }

  // ---- live status: one stream per unfinished task; polling where a stream fails ----

  function parseEvents(buffer, onStatus) {
    // Server-sent events: blocks separated by a blank line; returns what is left over.
    const blocks = buffer.split(/\r?\n\r?\n/);
    const rest = blocks.pop();
    for (const block of blocks) {
      let event = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (event === "status" && data.length) onStatus(JSON.parse(data.join("\n")));
    }
    return rest;
  }

  async function follow(entry) {
    // EventSource cannot send the Authorization header: fetch reads the stream instead.
    entry.streaming = true;
    try {
      const response = await fetch(`/v1/status/stream?task_id=${encodeURIComponent(entry.id)}`, {
        headers: { Authorization: `Bearer ${apiKey}`, Accept: "text/event-stream" },
        cache: "no-store",
      });
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer = parseEvents(buffer + value, (data) => {
          entry.data = data;
          if (errorFromPolling) hideError();
          renderTask(entry);
          if (isDone(entry)) refreshAccount();
        });
      }
    } catch (_) {
      /* no stream here (or it broke): the poll loop looks after this task */
    } finally {
      entry.streaming = false;
      if (!isDone(entry) && !entry.missing) schedulePoll(pollDelay(1));
    }
  }

  function startStreams() {
    for (const entry of tasks.values()) {
      if (entry.data && !isDone(entry) && !entry.missing && !entry.streaming && apiKey) {
        follow(entry);
      }
    }
  }

  async function poll() {
    const active = [...tasks.values()].filter((t) => !isDone(t) && !t.missing && !t.streaming);
    if (!apiKey || active.length === 0) return;
    let finished = false;
    let wait = pollDelay(active.length);
    await Promise.all(active.map(async (entry) => {
      try {
        entry.data = await api("GET", `/v1/status?task_id=${encodeURIComponent(entry.id)}`);
        if (errorFromPolling) hideError();
        if (isDone(entry)) finished = true;
      } catch (err) {
        if (err.status === 404) entry.missing = true;
        else showError(err.message, { fromPolling: true });
        if (err.retryAfter) wait = Math.max(wait, err.retryAfter * 1000);
        if (err.status === 401) wait = Math.max(wait, 15000);
      }
      renderTask(entry);
    }));
    if (finished) refreshAccount();
    startStreams();
    if ([...tasks.values()].some((t) => !isDone(t) && !t.missing && !t.streaming)) {
      schedulePoll(wait);
    }
  }

  // ---- images ----

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(new Error(`Cannot read ${file.name}`));
      reader.readAsDataURL(file);
    });
  }

  function renderPreviews() {
    els.previews.replaceChildren();
    pickedFiles.forEach((picked, index) => {
      const item = document.createElement("li");
      const img = document.createElement("img");
      img.src = picked.dataUrl;
      img.alt = picked.name;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "×";
      remove.setAttribute("aria-label", `Remove ${picked.name}`);
      remove.addEventListener("click", () => {
        pickedFiles.splice(index, 1);
        renderPreviews();
        els.imageFiles.focus();
      });
      item.append(img, remove);
      els.previews.append(item);
    });
  }

  els.imageFiles.addEventListener("change", async () => {
    try {
      for (const file of els.imageFiles.files) {
        pickedFiles.push({ name: file.name, dataUrl: await readAsDataUrl(file) });
      }
    } catch (err) {
      showError(err.message);
    }
    els.imageFiles.value = "";
    renderPreviews();
  });

  function imageRefs() {
    const urls = els.imageUrls.value.split(/\s+/).map((s) => s.trim()).filter(Boolean);
    return [...urls, ...pickedFiles.map((p) => p.dataUrl)];
  }

  // ---- forms ----

  function selected(name) {
    const input = els.form.querySelector(`input[name="${name}"]:checked`);
    return input ? input.value : undefined;
  }

  function useKey(key) {
    const changed = key !== apiKey;
    apiKey = key;
    store(KEY_STORAGE, key || null);
    if (changed) {
      // Tasks belong to the account of the key that made them.
      for (const entry of tasks.values()) entry.el.remove();
      tasks.clear();
      saveTasks();
      els.empty.hidden = false;
      account = null;
    }
    renderAccount();
    return changed;
  }

  els.keyForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    hideError();
    useKey(els.key.value.trim());
    if (apiKey) await refreshAccount({ mergeRecent: true });
  });

  els.forgetKey.addEventListener("click", () => {
    els.key.value = "";
    useKey("");
    hideError();
    els.key.focus();
  });

  els.clear.addEventListener("click", () => {
    for (const entry of tasks.values()) entry.el.remove();
    tasks.clear();
    saveTasks();
    els.empty.hidden = false;
  });

  els.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.ctrlKey && !event.altKey
        && !event.metaKey && !event.isComposing) {
      event.preventDefault();
      els.form.requestSubmit();
    }
  });

  els.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    hideError();
    const typed = els.key.value.trim();
    if (typed !== apiKey) {
      useKey(typed);
      if (apiKey) refreshAccount();
    }
    if (!apiKey) {
      showError("Paste your API key first.");
      els.key.focus();
      return;
    }
    const images = imageRefs();
    if (images.length > MAX_IMAGES) {
      showError(`At most ${MAX_IMAGES} images, please (${images.length} chosen).`);
      return;
    }
    const body = { prompt: els.prompt.value, mode: selected("mode"), ratio: selected("ratio") };
    if (images.length) body.images = images;
    els.submit.disabled = true;
    els.submit.textContent = "Submitting…";
    try {
      const data = await api("POST", "/v1/generate", body);
      addTask({ id: data.task_id, prompt: body.prompt.trim(), mode: body.mode, ratio: body.ratio },
              { front: true });
      saveTasks();
      schedulePoll(300);
      refreshAccount();
    } catch (err) {
      showError(err.message);
      els.prompt.focus();
    } finally {
      els.submit.disabled = false;
      els.submit.textContent = "Generate";
    }
  });

  // ---- start ----

  els.key.value = apiKey;
  for (const info of load(TASKS_STORAGE, [])) {
    if (info && typeof info.id === "string") addTask(info, { front: false });
  }
  els.empty.hidden = tasks.size > 0;
  renderAccount();
  if (apiKey) {
    refreshAccount({ mergeRecent: true });
    schedulePoll(0);
  }
})();
