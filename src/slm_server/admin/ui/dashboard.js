// The dashboard: polls GET /admin/status every second and shows it; load, unload,
// restart, reload and logs for admins; a playground for everyone who may use a model.
// Plain script, no build step, no outside files. Text from the server is only ever set
// as textContent, never parsed as HTML.
"use strict";

(() => {
  const KEY_STORE = "slm-server-api-key"; // sessionStorage only: gone with the tab
  const POLL_MS = 1000;
  const POLL_TIMEOUT_MS = 10000;
  const LOG_LINES_KEPT = 500;
  const LOG_LINE_MAX_CHARS = 4000; // a line that never ends is cut, not kept growing
  const STATES = ["ready", "starting", "stopping", "failed", "unloaded", "disabled"];
  const PALETTE = ["#2f6fdb", "#1f9d55", "#8e44ad", "#d08a00", "#16a2b8", "#c0392b", "#6c5ce7"];

  const $ = (id) => document.getElementById(id);
  let pollTimer = null;
  let lastStatus = null;
  let modelIds = "";
  const rows = new Map(); // role -> the row's elements
  const busy = new Set(); // "role action" under way
  const logPanels = new Map(); // role -> {panel, controller}
  let playController = null;

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // -- talking to the router ------------------------------------------------------

  function apiKey() {
    return sessionStorage.getItem(KEY_STORE);
  }

  function headers(extra = {}) {
    const key = apiKey();
    return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
  }

  async function errorMessage(response) {
    const text = await response.text();
    try {
      const error = JSON.parse(text).error;
      if (error && typeof error.message === "string") {
        const problems = Array.isArray(error.problems) ? error.problems : [];
        return [error.message, ...problems.map((p) => `- ${typeof p === "string" ? p : JSON.stringify(p)}`)].join("\n");
      }
    } catch (_) {
      // not JSON: the text as it came
    }
    return text.trim().slice(0, 500) || `HTTP ${response.status}`;
  }

  // The router's answer as JSON; HttpError with the error envelope's message otherwise.
  // A 401 also asks the user for a key.
  async function call(method, path, { timeoutMs } = {}) {
    const init = { method, headers: headers() };
    if (timeoutMs) init.signal = AbortSignal.timeout(timeoutMs);
    const response = await fetch(path, init);
    if (!response.ok) {
      const message = await errorMessage(response);
      if (response.status === 401) askForKey(message);
      throw new HttpError(response.status, message);
    }
    return response.json();
  }

  // -- keys -----------------------------------------------------------------------

  function askForKey(message) {
    clearTimeout(pollTimer);
    $("dashboard").hidden = true;
    $("key-form").hidden = false;
    $("key-error").textContent = apiKey() ? message : "";
    $("key-input").focus();
  }

  function useKey(event) {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    $("key-input").value = "";
    $("key-form").hidden = true;
    poll();
  }

  function forgetKey() {
    sessionStorage.removeItem(KEY_STORE);
    for (const role of [...logPanels.keys()]) closeLogs(role);
    modelIds = "";
    poll();
  }

  // -- polling --------------------------------------------------------------------

  let polling = false; // one status request at a time
  let pollAgain = false; // asked for while one was under way: another right after it

  async function poll() {
    if (polling) {
      pollAgain = true;
      return;
    }
    polling = true;
    clearTimeout(pollTimer);
    let waitForKey = false;
    try {
      const status = await call("GET", "/admin/status", { timeoutMs: POLL_TIMEOUT_MS });
      lastStatus = status;
      render(status);
      $("connection").textContent = `live, ${new Date().toLocaleTimeString()}`;
      $("connection").className = "muted";
      refreshModels(status);
    } catch (error) {
      waitForKey = error.status === 401; // useKey polls again
      if (!waitForKey) {
        $("connection").textContent = `no answer from the router: ${error.message}`;
        $("connection").className = "error";
      }
    } finally {
      polling = false;
    }
    const soon = pollAgain;
    pollAgain = false;
    clearTimeout(pollTimer);
    if (!waitForKey || soon) pollTimer = setTimeout(poll, soon ? 0 : POLL_MS);
  }

  // -- formatting -----------------------------------------------------------------

  function megabytes(mb) {
    if (mb === null || mb === undefined) return "–";
    return mb >= 1000 ? `${(mb / 1000).toFixed(1)} GB` : `${mb} MB`;
  }

  function seconds(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  }

  function duration(s) {
    if (s === null || s === undefined) return "–";
    const units = [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]];
    const parts = [];
    let rest = Math.floor(s);
    for (const [name, size] of units) {
      if (rest >= size || (name === "s" && parts.length === 0)) {
        parts.push(`${Math.floor(rest / size)}${name}`);
        rest %= size;
      }
      if (parts.length === 2) break;
    }
    return parts.join(" ");
  }

  function rate(value, digits) {
    return value === null || value === undefined ? "–" : value.toFixed(digits);
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function notice(message, isError = false) {
    $("notice").textContent = message;
    $("notice").className = isError ? "error" : "";
  }

  // -- rendering ------------------------------------------------------------------

  function render(status) {
    $("dashboard").hidden = false;
    $("forget-key").hidden = !apiKey();
    $("router-info").textContent = `version ${status.version}, up ${duration(status.uptime_s)}`;
    const windowMin = Math.round(status.window_s / 60);
    const covered = status.window_covered_s < status.window_s - 5
      ? ` (the router has run ${duration(status.window_covered_s)} of them)` : "";
    $("window-note").textContent = `figures over the last ${windowMin} minutes${covered}`;
    for (const node of document.querySelectorAll(".admin-only")) node.hidden = !status.can_control;
    renderMemory(status);
    renderModels(status);
  }

  function running(model) {
    return ["starting", "ready", "stopping"].includes(model.state) || model.memory_mb;
  }

  function renderMemory(status) {
    const bar = $("memory-bar");
    bar.replaceChildren();
    const budget = status.memory.budget_mb;
    const shown = status.models.filter(running).map((m, index) => ({
      model: m,
      size: m.memory_mb ?? m.memory_estimate_mb ?? 0,
      measured: m.memory_mb !== null && m.memory_mb !== undefined,
      colour: PALETTE[index % PALETTE.length],
    }));
    const used = shown.reduce((sum, s) => sum + s.size, 0);
    const scale = Math.max(budget || 0, used, 1);
    for (const s of shown) {
      const segment = element("div", s.measured ? "segment" : "segment estimate", s.model.model_id);
      segment.style.width = `${(100 * s.size) / scale}%`;
      segment.style.background = s.colour;
      segment.title = `${s.model.model_id}: ${megabytes(s.size)} ${s.measured ? "measured" : "estimated (not measured yet)"}`;
      bar.append(segment);
    }
    const parts = [budget
      ? `${megabytes(used)} of the ${megabytes(budget)} budget in use`
      : `${megabytes(used)} in use (no memory budget set)`];
    const waiting = status.models.filter((m) => !running(m) && m.memory_estimate_mb);
    if (waiting.length) {
      parts.push(`not loaded: ${waiting.map((m) => `${m.model_id} needs about ${megabytes(m.memory_estimate_mb)}`).join(", ")}`);
    }
    if (shown.some((s) => !s.measured)) parts.push("striped: estimated, not measured yet");
    $("memory-legend").textContent = parts.join("; ");
  }

  function renderModels(status) {
    const tbody = document.querySelector("#models tbody");
    const seen = new Set();
    for (const model of status.models) {
      seen.add(model.role);
      let row = rows.get(model.role);
      if (!row) {
        row = newRow(model.role);
        rows.set(model.role, row);
      }
      tbody.append(row.tr, row.problem); // in the status's order
      fillRow(row, model, status);
    }
    for (const [role, row] of rows) {
      if (!seen.has(role)) {
        row.tr.remove();
        row.problem.remove();
        rows.delete(role);
      }
    }
  }

  function newRow(role) {
    const tr = element("tr");
    tr.dataset.role = role;
    const cells = {};
    for (const name of ["model", "backend", "state", "memory", "busy", "rpm", "latency", "ttfb", "tokens", "restarts", "mode", "idle", "actions"]) {
      cells[name] = element("td", ["model", "backend", "state", "mode", "actions"].includes(name) ? "" : "num");
      tr.append(cells[name]);
    }
    cells.actions.classList.add("admin-only", "actions");
    const buttons = {};
    for (const [action, label] of [["load", "Load"], ["unload", "Unload"], ["restart", "Restart"], ["logs", "Logs"]]) {
      const button = element("button", `action-${action}`, label);
      button.type = "button";
      button.addEventListener("click", () => (action === "logs" ? toggleLogs(role) : act(role, action)));
      buttons[action] = button;
      cells.actions.append(button);
    }
    const problem = element("tr", "problem");
    problem.dataset.role = role;
    const problemCell = element("td");
    problemCell.colSpan = 13;
    problem.append(problemCell);
    return { tr, cells, buttons, problem, problemCell, tail: "" };
  }

  function fillRow(row, m, status) {
    const c = row.cells;
    c.model.replaceChildren(element("span", "id", m.model_id), element("span", "role", m.role));
    c.backend.textContent = m.backend;
    const state = STATES.includes(m.state) ? m.state : "other";
    const badge = element("span", `state state-${state}`, m.state);
    badge.title = m.status ? `health: ${m.status}` : "";
    c.state.replaceChildren(badge);
    c.memory.textContent = m.memory_mb !== null && m.memory_mb !== undefined
      ? megabytes(m.memory_mb) : m.memory_estimate_mb ? `~${megabytes(m.memory_estimate_mb)}` : "–";
    c.memory.title = m.memory_mb ? "measured" : "estimated need";
    c.busy.textContent = `${m.in_flight ?? 0} / ${m.queued ?? 0}`;
    c.rpm.textContent = rate(m.requests_per_min, 1);
    c.latency.textContent = `${seconds(m.latency_p50_s)} / ${seconds(m.latency_p95_s)}`;
    c.ttfb.textContent = `${seconds(m.ttfb_p50_s)} / ${seconds(m.ttfb_p95_s)}`;
    c.tokens.textContent = rate(m.tokens_per_s, 1);
    c.restarts.textContent = m.restarts ?? "–";
    const mode = m.pinned ? "pinned" : m.on_demand ? "on demand" : "at start";
    c.mode.textContent = m.idle_ttl_s ? `${mode}, TTL ${duration(m.idle_ttl_s)}` : mode;
    c.mode.title = m.idle_ttl_s ? `unloaded after ${duration(m.idle_ttl_s)} without requests` : "";
    c.idle.textContent = duration(m.idle_s);
    c.actions.hidden = !status.can_control;
    const b = row.buttons;
    for (const action of ["load", "unload", "restart"]) b[action].hidden = !status.runs_backends;
    b.load.disabled = busy.has(`${m.role} load`) || ["ready", "starting", "disabled"].includes(m.state);
    b.unload.disabled = busy.has(`${m.role} unload`) || ["unloaded", "disabled"].includes(m.state);
    b.restart.disabled = busy.has(`${m.role} restart`) || !["ready", "failed", "starting"].includes(m.state);
    b.logs.textContent = logPanels.has(m.role) ? "Hide logs" : "Logs";
    fillProblem(row, m);
  }

  function fillProblem(row, m) {
    const tail = Array.isArray(m.log_tail) ? m.log_tail.join("\n") : "";
    const text = m.last_error || "";
    row.problem.hidden = !text && !tail;
    const key = `${text}\n${tail}`;
    if (key === row.tail) return; // kept as is: an open log tail stays open
    row.tail = key;
    const cell = row.problemCell;
    cell.replaceChildren(element("span", "", text || "last lines of its log:"));
    if (tail) {
      const details = element("details");
      details.append(element("summary", "", "last lines of its log"), element("pre", "", tail));
      cell.append(details);
    }
  }

  // -- actions --------------------------------------------------------------------

  const DOING = { load: "loading", unload: "unloading", restart: "restarting" };
  const DONE = { load: "loaded", unload: "unloaded", restart: "restarted" };

  async function act(role, action) {
    const id = `${role} ${action}`;
    busy.add(id);
    if (lastStatus) render(lastStatus);
    notice(`${role}: ${DOING[action]}…`);
    try {
      await call("POST", `/v1/backends/${encodeURIComponent(role)}/${action}`);
      notice(`${role}: ${DONE[action]}`);
    } catch (error) {
      notice(`${role}: ${action} failed: ${error.message}`, true);
    } finally {
      busy.delete(id);
      poll();
    }
  }

  async function reloadConfig() {
    const button = $("reload-config");
    button.disabled = true;
    notice("reloading the config…");
    try {
      const answer = await call("POST", "/admin/reload");
      notice(reloadSummary(answer));
    } catch (error) {
      notice(`reload failed: ${error.message}`, true);
    } finally {
      button.disabled = false;
      modelIds = ""; // the models may have changed
      poll();
    }
  }

  function reloadSummary(answer) {
    const parts = [];
    if (answer && answer.roles && typeof answer.roles === "object") {
      const roles = Object.entries(answer.roles).map(([role, what]) => `${role} ${typeof what === "string" ? what : JSON.stringify(what)}`);
      if (roles.length) parts.push(roles.join(", "));
    }
    const restart = answer && answer.router && answer.router.restart_needed;
    if (Array.isArray(restart) && restart.length) parts.push(`needs a restart of the server: ${restart.join(", ")}`);
    return parts.length ? `config reloaded: ${parts.join("; ")}` : "config reloaded";
  }

  // -- logs -----------------------------------------------------------------------

  function toggleLogs(role) {
    if (logPanels.has(role)) closeLogs(role);
    else openLogs(role);
    if (lastStatus) render(lastStatus);
  }

  function closeLogs(role) {
    const open = logPanels.get(role);
    if (!open) return;
    open.controller.abort();
    open.panel.remove();
    logPanels.delete(role);
  }

  function openLogs(role) {
    const panel = element("div", "log-panel");
    panel.dataset.role = role;
    const head = element("div", "log-head");
    const state = element("span", "muted", "connecting…");
    const close = element("button", "", "Close");
    close.type = "button";
    close.addEventListener("click", () => toggleLogs(role));
    head.append(element("strong", "", `Log of ${role}`), state, element("span", "spacer"), close);
    const pre = element("pre");
    panel.append(head, pre);
    $("logs").append(panel);
    const controller = new AbortController();
    logPanels.set(role, { panel, controller });
    follow(role, pre, state, controller.signal);
  }

  async function follow(role, pre, state, signal) {
    const lines = [];
    try {
      const path = `/admin/logs/${encodeURIComponent(role)}?tail=200&follow=1`;
      const response = await fetch(path, { headers: headers(), signal });
      if (!response.ok) {
        state.textContent = await errorMessage(response);
        state.className = "error";
        return;
      }
      state.textContent = "following";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let partial = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const pieces = (partial + value).split("\n");
        partial = pieces.pop().slice(0, LOG_LINE_MAX_CHARS);
        for (const line of pieces) lines.push(line.slice(0, LOG_LINE_MAX_CHARS));
        if (lines.length > LOG_LINES_KEPT) lines.splice(0, lines.length - LOG_LINES_KEPT);
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.textContent = lines.join("\n");
        if (atEnd) pre.scrollTop = pre.scrollHeight;
      }
      state.textContent = "the log stream ended";
    } catch (error) {
      if (error.name !== "AbortError") state.textContent = `stopped: ${error.message}`;
    }
  }

  // -- playground -----------------------------------------------------------------

  async function refreshModels(status) {
    const ids = status.models.map((m) => m.model_id).join(",");
    if (ids === modelIds) return;
    modelIds = ids;
    let listed;
    try {
      listed = (await call("GET", "/v1/models")).data;
    } catch (_) {
      modelIds = ""; // try again on the next poll
      return;
    }
    const select = $("play-model");
    const chosen = select.value;
    select.replaceChildren();
    for (const model of listed) {
      if (model.model_type && !["lm", "multimodal"].includes(model.model_type)) continue;
      const option = element("option", "", model.id);
      option.value = model.id;
      select.append(option);
    }
    if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
  }

  async function play(event) {
    event.preventDefault();
    const model = $("play-model").value;
    const content = $("play-message").value.trim();
    const maxTokens = Math.max(1, parseInt($("play-max-tokens").value, 10) || 256);
    const answer = $("play-answer");
    const problem = $("play-error");
    if (!model || !content) {
      problem.textContent = model ? "type a message first" : "no chat model to talk to";
      return;
    }
    answer.textContent = "";
    problem.textContent = "";
    answer.classList.add("muted");
    answer.textContent = "waiting for the model (it may have to load first)…";
    playController = new AbortController();
    $("play-send").disabled = true;
    $("play-stop").hidden = false;
    let started = false;
    const write = (text) => {
      if (!started) {
        started = true;
        answer.textContent = "";
        answer.classList.remove("muted");
      }
      answer.textContent += text;
    };
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: headers({ "Content-Type": "application/json" }),
        body: JSON.stringify({ model, messages: [{ role: "user", content }], stream: true, max_tokens: maxTokens }),
        signal: playController.signal,
      });
      if (!response.ok) {
        const message = await errorMessage(response);
        if (response.status === 401) askForKey(message);
        throw new HttpError(response.status, message);
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, end).replace(/\r$/, "");
          buffer = buffer.slice(end + 1);
          const error = streamEvent(line, write);
          if (error) problem.textContent = error;
        }
      }
      if (!started) answer.textContent = "";
    } catch (error) {
      if (!started) answer.textContent = "";
      problem.textContent = error.name === "AbortError" ? "stopped" : error.message;
    } finally {
      answer.classList.remove("muted");
      $("play-send").disabled = false;
      $("play-stop").hidden = true;
      playController = null;
    }
  }

  // One line of a chat completion stream: its text goes to write; an error's message
  // is returned.
  function streamEvent(line, write) {
    if (!line.startsWith("data:")) return null;
    const data = line.slice(5).trim();
    if (!data || data === "[DONE]") return null;
    let event;
    try {
      event = JSON.parse(data);
    } catch (_) {
      return null;
    }
    if (event.error) return typeof event.error === "string" ? event.error : event.error.message || JSON.stringify(event.error);
    for (const choice of event.choices || []) {
      const delta = choice.delta || {};
      if (typeof delta.content === "string" && delta.content) write(delta.content);
    }
    return null;
  }

  // -- start ----------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("key-entry").addEventListener("submit", useKey);
    $("forget-key").addEventListener("click", forgetKey);
    $("reload-config").addEventListener("click", reloadConfig);
    $("playground").addEventListener("submit", play);
    $("play-stop").addEventListener("click", () => playController && playController.abort());
    poll();
  });
})();
