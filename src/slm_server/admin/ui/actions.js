// What an admin does from the dashboard: load, unload and restart a model, reload the
// config, and follow a backend's log in a panel. Each takes `refresh`, called when the
// table should show a change (a button turns busy or free, a panel opens or closes).

import { $, call, element, headers, notice, refusal } from "/ui/common.js";

// A followed log holds one of the browser's connections to the router for as long as it
// is open, and Chromium keeps at most 6 per server: past them the status poll and every
// button wait behind the logs. Three leave room for the poll, a playground answer and an
// action.
export const MAX_LOG_PANELS = 3;
const LOG_LINES_KEPT = 500;
const LOG_LINE_MAX_CHARS = 4000; // a line that never ends is cut, not kept growing

const DOING = { load: "loading", unload: "unloading", restart: "restarting" };
const DONE = { load: "loaded", unload: "unloaded", restart: "restarted" };

const busy = new Set(); // "role action" under way
const logPanels = new Map(); // role -> {panel, controller}

export function isBusy(role, action) {
  return busy.has(`${role} ${action}`);
}

export async function act(role, action, refresh) {
  const id = `${role} ${action}`;
  busy.add(id);
  refresh();
  notice(`${role}: ${DOING[action]}…`);
  try {
    await call("POST", `/v1/backends/${encodeURIComponent(role)}/${action}`);
    notice(`${role}: ${DONE[action]}`);
  } catch (error) {
    notice(`${role}: ${action} failed: ${error.message}`, true);
  } finally {
    busy.delete(id);
    refresh();
  }
}

export async function reloadConfig(refresh) {
  const button = $("reload-config");
  button.disabled = true;
  notice("reloading the config…");
  try {
    notice(reloadSummary(await call("POST", "/admin/reload")));
  } catch (error) {
    notice(`reload failed: ${error.message}`, true);
  } finally {
    button.disabled = false;
    refresh();
  }
}

// What a reload did, one line each: the roles by what happened to them, the router
// settings changed now and those waiting for a restart, and check-config's warnings.
const RELOAD_CHANGES = [
  ["added", "added"],
  ["removed", "removed (stopped once its requests are done)"],
  ["replaced", "changed (restarted with its new settings)"],
  ["updated", "updated in place, left running"],
  ["unchanged", "unchanged"],
];

export function reloadSummary(answer) {
  const lines = ["config reloaded"];
  const roles = answer && typeof answer.roles === "object" && answer.roles ? answer.roles : {};
  const said = new Map(RELOAD_CHANGES);
  const byChange = new Map(RELOAD_CHANGES.map(([change]) => [change, []]));
  for (const [role, change] of Object.entries(roles)) {
    const key = String(change); // a change this page does not know is listed as it came
    if (!byChange.has(key)) byChange.set(key, []);
    byChange.get(key).push(role);
  }
  for (const [change, listed] of byChange) {
    if (listed.length) lines.push(`${said.get(change) ?? change}: ${listed.join(", ")}`);
  }
  const router = (answer && answer.router) || {};
  if (Array.isArray(router.changed) && router.changed.length) {
    lines.push(`router settings changed now: ${router.changed.join(", ")}`);
  }
  if (Array.isArray(router.restart_needed) && router.restart_needed.length) {
    lines.push(`changed in the file, but only a restart of the server applies them (the old values stay until then): ${router.restart_needed.join(", ")}`);
  }
  const warnings = answer && Array.isArray(answer.warnings) ? answer.warnings : [];
  if (warnings.length) lines.push("warnings:", ...warnings.map((w) => `- ${w}`));
  return lines.join("\n");
}

// -- logs -------------------------------------------------------------------------

export function hasLogs(role) {
  return logPanels.has(role);
}

export function toggleLogs(role, refresh) {
  if (logPanels.has(role)) closeLogs(role);
  else if (logPanels.size >= MAX_LOG_PANELS) {
    notice(`at most ${MAX_LOG_PANELS} logs can be followed at once (each holds one of the few connections a browser opens to a server): close one to open another`, true);
  } else openLogs(role, refresh);
  refresh();
}

export function closeAllLogs() {
  for (const role of [...logPanels.keys()]) closeLogs(role);
}

function closeLogs(role) {
  const open = logPanels.get(role);
  if (!open) return;
  open.controller.abort();
  open.panel.remove();
  logPanels.delete(role);
}

function openLogs(role, refresh) {
  const panel = element("div", "log-panel");
  panel.dataset.role = role;
  const head = element("div", "log-head");
  const state = element("span", "muted", "connecting…");
  const close = element("button", "", "Close");
  close.type = "button";
  close.addEventListener("click", () => toggleLogs(role, refresh));
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
      state.textContent = (await refusal(response)).message;
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
