// What every part of the dashboard uses: the API key, calls to the router, new elements.
// Text from the server is only ever set as textContent, never parsed as HTML.

const KEY_STORE = "slm-server-api-key"; // sessionStorage only: gone with the tab
// Sent on the document when the router refuses the key (401): the page asks for one.
export const KEY_REFUSED = "slm-key-refused";

export const $ = (id) => document.getElementById(id);

export function apiKey() {
  return sessionStorage.getItem(KEY_STORE);
}

export function keepKey(key) {
  sessionStorage.setItem(KEY_STORE, key);
}

export function dropKey() {
  sessionStorage.removeItem(KEY_STORE);
}

export function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

export class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code; // the error envelope's code, null without one
  }
}

// The router's refusal as an HttpError: the error envelope's message (and problems),
// else the text as it came. A 401 also has the page ask for a key.
export async function refusal(response) {
  const text = await response.text();
  let message = text.trim().slice(0, 500) || `HTTP ${response.status}`;
  let code = null;
  try {
    const error = JSON.parse(text).error;
    if (error && typeof error.message === "string") {
      const problems = (Array.isArray(error.problems) ? error.problems : [])
        .map((p) => (typeof p === "string" ? p : JSON.stringify(p)));
      message = [withoutListing(error.message, problems), ...problems.map((p) => `- ${p}`)].join("\n");
      code = typeof error.code === "string" ? error.code : null;
    }
  } catch (_) {
    // not JSON: the text as it came
  }
  if (response.status === 401) document.dispatchEvent(new CustomEvent(KEY_REFUSED, { detail: message }));
  return new HttpError(response.status, code, message);
}

// A message that ends with its problems joined by "; " (a rejected config's), without
// them: the page lists them below it, one a line.
function withoutListing(message, problems) {
  const listing = problems.join("; ");
  if (!problems.length || !message.endsWith(listing)) return message;
  return message.slice(0, message.length - listing.length).replace(/[:;\s]+$/, "");
}

// The router's answer as JSON; its refusal thrown as an HttpError.
export async function call(method, path, { timeoutMs } = {}) {
  const init = { method, headers: headers() };
  if (timeoutMs) init.signal = AbortSignal.timeout(timeoutMs);
  const response = await fetch(path, init);
  if (!response.ok) throw await refusal(response);
  return response.json();
}

export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function notice(message, isError = false) {
  $("notice").textContent = message;
  $("notice").className = isError ? "error" : "";
}
