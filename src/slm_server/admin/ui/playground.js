// The playground: pick a chat model, send a message, see the answer stream in. It needs
// only a key that may use the model (any key, not only an admin's).

import { $, call, element, headers, refusal } from "/ui/common.js";

let listedIds = null; // the model ids the choice was last built for
let controller = null; // the answer under way

// Build the choice of models from GET /v1/models when `ids` (the models the router
// serves, as a string) changed since the last time; null: list them again.
export async function listModels(ids = null) {
  if (ids !== null && ids === listedIds) return;
  listedIds = ids;
  let listed;
  try {
    listed = (await call("GET", "/v1/models")).data;
  } catch (_) {
    listedIds = null; // try again on the next call
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

export function startPlayground() {
  $("playground").addEventListener("submit", play);
  $("play-stop").addEventListener("click", () => controller && controller.abort());
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
  problem.textContent = "";
  answer.classList.add("muted");
  answer.textContent = "waiting for the model (it may have to load first)…";
  controller = new AbortController();
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
      signal: controller.signal,
    });
    if (!response.ok) throw await refusal(response);
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
    controller = null;
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
