// The dashboard: asks the router for GET /admin/status every second and shows it; the
// buttons and log panels are in actions.js, the playground in playground.js. Plain
// modules, no build step, no outside files. Text from the server is only ever set as
// textContent, never parsed as HTML.

import * as actions from "/ui/actions.js";
import { $, KEY_REFUSED, apiKey, call, dropKey, element, keepKey } from "/ui/common.js";
import { listModels, startPlayground } from "/ui/playground.js";

const POLL_MS = 1000;
const POLL_TIMEOUT_MS = 10000;
const STATES = ["ready", "starting", "stopping", "failed", "unloaded", "disabled"];
const PALETTE = ["#2f6fdb", "#1f9d55", "#8e44ad", "#d08a00", "#16a2b8", "#c0392b", "#6c5ce7"];

let pollTimer = null;
let lastStatus = null;
const rows = new Map(); // role -> the row's elements

// -- keys -------------------------------------------------------------------------

function askForKey(message) {
  clearTimeout(pollTimer);
  for (const id of ["dashboard", "admin-needed", "play-section", "reload-config"]) $(id).hidden = true;
  $("key-form").hidden = false;
  $("key-error").textContent = apiKey() ? message : "";
  $("key-input").focus();
}

function useKey(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  keepKey(key);
  $("key-input").value = "";
  $("key-form").hidden = true;
  poll();
}

function forgetKey() {
  dropKey();
  actions.closeAllLogs();
  poll();
}

// A key that may use models but is not an admin's: the status is not for it (it holds
// every model's traffic and the backends' logs), the playground is.
function showAdminNeeded() {
  $("dashboard").hidden = true;
  $("reload-config").hidden = true;
  $("admin-needed").hidden = false;
  $("play-section").hidden = false;
  $("forget-key").hidden = !apiKey();
  $("connection").textContent = "";
  listModels();
}

// -- polling ----------------------------------------------------------------------

let polling = false; // one status request at a time
let pollAgain = false; // asked for while one was under way: another right after it

async function poll() {
  if (polling) {
    pollAgain = true;
    return;
  }
  polling = true;
  clearTimeout(pollTimer);
  let stop = false; // until a new key is given
  try {
    const status = await call("GET", "/admin/status", { timeoutMs: POLL_TIMEOUT_MS });
    lastStatus = status;
    render(status);
    $("connection").textContent = `live, ${new Date().toLocaleTimeString()}`;
    $("connection").className = "muted";
    listModels(status.models.map((m) => m.model_id).join(","));
  } catch (error) {
    stop = error.status === 401 || error.code === "admin_required";
    if (error.code === "admin_required") showAdminNeeded();
    else if (!stop) {
      $("connection").textContent = `no answer from the router: ${error.message}`;
      $("connection").className = "error";
    }
  } finally {
    polling = false;
  }
  const soon = pollAgain;
  pollAgain = false;
  clearTimeout(pollTimer);
  if (!stop || soon) pollTimer = setTimeout(poll, soon ? 0 : POLL_MS);
}

// Show a change at once: the busy buttons, the open panels, then the status again.
function refresh() {
  if (lastStatus) render(lastStatus);
  poll();
}

// -- formatting -------------------------------------------------------------------

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

// -- rendering --------------------------------------------------------------------

function render(status) {
  $("dashboard").hidden = false;
  $("play-section").hidden = false;
  $("admin-needed").hidden = true;
  $("forget-key").hidden = !apiKey();
  $("reload-config").hidden = false;
  $("router-info").textContent = `version ${status.version}, up ${duration(status.uptime_s)}`;
  const windowMin = Math.round(status.window_s / 60);
  const covered = status.window_covered_s < status.window_s - 5
    ? ` (the router has run ${duration(status.window_covered_s)} of them)` : "";
  $("window-note").textContent = `figures over the last ${windowMin} minutes${covered}`;
  renderMemory(status);
  renderModels(status);
}

// The models the status counts in memory.used_mb (measured) and memory.estimated_mb.
function holdsMemory(model) {
  return model.memory_mb !== null && model.memory_mb !== undefined
    || ["starting", "ready", "stopping"].includes(model.state);
}

function renderMemory(status) {
  const bar = $("memory-bar");
  bar.replaceChildren();
  const { budget_mb: budget, used_mb: used, estimated_mb: estimated } = status.memory;
  const shown = status.models.filter(holdsMemory).map((m, index) => ({
    model: m,
    size: m.memory_mb ?? m.memory_estimate_mb ?? 0,
    measured: m.memory_mb !== null && m.memory_mb !== undefined,
    colour: PALETTE[index % PALETTE.length],
  }));
  const scale = Math.max(budget || 0, used + estimated, 1);
  for (const s of shown) {
    const segment = element("div", s.measured ? "segment" : "segment estimate", s.model.model_id);
    segment.style.width = `${(100 * s.size) / scale}%`;
    segment.style.background = s.colour;
    segment.title = `${s.model.model_id}: ${megabytes(s.size)} ${s.measured ? "measured" : "estimated (not measured yet)"}`;
    bar.append(segment);
  }
  const taken = estimated ? `${megabytes(used)} measured + about ${megabytes(estimated)} estimated` : megabytes(used);
  const parts = [budget
    ? `${taken} of the ${megabytes(budget)} budget in use`
    : `${taken} in use (no memory budget set)`];
  const waiting = status.models.filter((m) => !holdsMemory(m) && m.memory_estimate_mb);
  if (waiting.length) {
    parts.push(`not loaded: ${waiting.map((m) => `${m.model_id} needs about ${megabytes(m.memory_estimate_mb)}`).join(", ")}`);
  }
  if (estimated) parts.push("striped: estimated, not measured yet");
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
    fillRow(row, model);
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
    cells[name].dataset.cell = name;
    tr.append(cells[name]);
  }
  cells.actions.classList.add("actions");
  const buttons = {};
  for (const [action, label] of [["load", "Load"], ["unload", "Unload"], ["restart", "Restart"], ["logs", "Logs"]]) {
    const button = element("button", `action-${action}`, label);
    button.type = "button";
    button.addEventListener("click", () => (action === "logs" ? actions.toggleLogs(role, refresh) : actions.act(role, action, refresh)));
    buttons[action] = button;
    cells.actions.append(button);
  }
  // Why there are no buttons: a model this router does not run (see control_note).
  const controlNote = element("span", "control-note muted");
  cells.actions.append(controlNote);
  const problem = element("tr", "problem");
  problem.dataset.role = role;
  const problemCell = element("td");
  problemCell.colSpan = 13;
  problem.append(problemCell);
  return { tr, cells, buttons, controlNote, problem, problemCell, tail: "" };
}

function fillRow(row, m) {
  const c = row.cells;
  const role = element("span", "role", m.role);
  if (m.pid) role.append(" · ", element("span", "pid", `pid ${m.pid}`));
  c.model.replaceChildren(element("span", "id", m.model_id), role);
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
  // When it starts means something only for a model this router starts.
  const mode = !m.controllable ? "–" : m.pinned ? "pinned" : m.on_demand ? "on demand" : "at start";
  c.mode.textContent = m.idle_ttl_s ? `${mode}, TTL ${duration(m.idle_ttl_s)}` : mode;
  c.mode.title = m.idle_ttl_s ? `unloaded after ${duration(m.idle_ttl_s)} without requests` : "";
  c.idle.textContent = duration(m.idle_s);
  const b = row.buttons;
  // Only for a backend this router runs: it refuses the others (and has no log of them).
  for (const action of ["load", "unload", "restart"]) b[action].hidden = !m.controllable;
  b.logs.hidden = !m.has_log;
  row.controlNote.textContent = m.controllable ? "" : m.control_note || "";
  b.load.disabled = actions.isBusy(m.role, "load") || ["ready", "starting", "disabled"].includes(m.state);
  b.unload.disabled = actions.isBusy(m.role, "unload") || ["unloaded", "disabled"].includes(m.state);
  b.restart.disabled = actions.isBusy(m.role, "restart") || !["ready", "failed", "starting"].includes(m.state);
  b.logs.textContent = actions.hasLogs(m.role) ? "Hide logs" : "Logs";
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

// -- start ------------------------------------------------------------------------

// Modules run once the page is parsed: the elements are there.
document.addEventListener(KEY_REFUSED, (event) => askForKey(event.detail));
$("key-entry").addEventListener("submit", useKey);
$("forget-key").addEventListener("click", forgetKey);
$("reload-config").addEventListener("click", () => actions.reloadConfig(refresh));
startPlayground();
poll();
