// Shared by the playground's modules: element lookup, relative API URLs, the bearer token, the server's error
// messages, and window.playground (the counters the browser tests read; plain data only, no functions).

export const $ = (id) => document.getElementById(id);

// Every URL is relative to the page, so it works on http or https, directly or behind the gateway.
export const api = (path) => new URL(path, document.baseURI).toString();

export const state = (window.playground = {
  status: "loading",
  chunks: 0,
  bytes: 0,
  samplesScheduled: 0,
  sampleRate: 24000,
  ttfaMs: null,
  rtf: null,
  audioS: 0,
  error: null,
  voices: [],
  // Voices panel: the clip (recorded or chosen), what saving it gave.
  recording: false,
  recordingS: 0,
  recordedRate: null,
  recordedSamples: 0,
  recordedS: 0,
  recordedPeak: 0,
  clipSource: null,
  voiceStatus: "idle",
  voiceError: null,
  voicesSaved: 0,
  voicesDeleted: 0,
  lastVoice: null,
  lastVoiceError: null,
  // Conversation view.
  conversation: null,
  turns: [],
  turnsAdded: 0,
  turnClipS: 0,
  conversationStatus: "idle",
  conversationError: null,
  conversationResets: 0,
});

export function token() {
  return $("token").value.trim();
}

// Authorization (when there is a token), plus a JSON content type unless `json` is false (multipart sets its own).
export function headers(json = true) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const value = token();
  if (value) h.Authorization = `Bearer ${value}`;
  return h;
}

// The server's error as {status, code, message, text}: `text` is what the page shows.
export async function readError(resp) {
  let message = resp.statusText;
  let code = null;
  try {
    const body = await resp.json();
    message = (body && body.error && body.error.message) || message;
    code = (body && body.error && body.error.code) || null;
  } catch (_) {
    // not JSON: keep the status text
  }
  const text =
    resp.status === 401 ? `401 Unauthorized: ${message}. Check the token.` : `${resp.status}: ${message}`;
  return { status: resp.status, code, message, text };
}

// Show (or hide, with an empty message) an alert element and keep the message in window.playground[key].
export function alertIn(id, key, message) {
  state[key] = message || null;
  $(id).textContent = message || "";
  $(id).hidden = !message;
}
