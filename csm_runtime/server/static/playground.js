// The playground. Speak streams `pcm` from /v1/audio/speech and plays it through Web Audio as it arrives (TTFA,
// RTF, duration, the WAV to download); with a conversation id set, the request continues that conversation
// (pg-conversation.js). The Voices panel clones a voice from a recorded or uploaded clip (pg-voices.js).
// window.playground (pg-common.js) holds the counters the browser tests read.

import { $, api, headers, readError, state } from "./pg-common.js";
import { wavBlob } from "./pg-audio.js";
import { conversationId, initConversation, showTurnsAfterSpeech } from "./pg-conversation.js";
import { initVoices, renderUploaded } from "./pg-voices.js";

let model = "tts-1";
let audioCtx = null;
let controller = null;
let sources = [];
let wavUrl = null;

function setStatus(status) {
  state.status = status;
  document.body.dataset.status = status;
  $("status").textContent = status;
}

function showError(message) {
  state.error = message;
  $("error").textContent = message;
  $("error").hidden = !message;
}

// The voice list (and the model) from the server; `pick` selects that voice once listed (a voice just saved).
async function loadVoices(pick = null) {
  showError("");
  setStatus("loading");
  const select = $("voice");
  try {
    const resp = await fetch(api("v1/voices"), { headers: headers(), cache: "no-store" });
    if (!resp.ok) {
      showError((await readError(resp)).text);
      setStatus("error");
      return [];
    }
    const body = await resp.json();
    state.voices = body.voices.map((v) => v.id);
    const previous = pick || select.value;
    select.replaceChildren(
      ...body.voices.map((v) => {
        const option = document.createElement("option");
        option.value = v.id;
        option.textContent = v.description ? `${v.id} — ${v.description}` : v.id;
        return option;
      }),
    );
    if (state.voices.includes(previous)) select.value = previous;
    const models = await fetch(api("v1/models"), { headers: headers(), cache: "no-store" });
    if (models.ok) {
      const data = (await models.json()).data;
      if (data.length) {
        model = data[0].id;
        $("model").textContent = `model: ${model}`;
      }
    }
    setStatus("idle");
    return body.voices;
  } catch (err) {
    showError(`cannot reach the server: ${err.message}`);
    setStatus("error");
    return [];
  }
}

function resetStats() {
  Object.assign(state, { chunks: 0, bytes: 0, samplesScheduled: 0, ttfaMs: null, rtf: null, audioS: 0 });
  $("ttfa").textContent = "–";
  $("rtf").textContent = "–";
  $("duration").textContent = "–";
  $("download").hidden = true;
  if (wavUrl) URL.revokeObjectURL(wavUrl);
  wavUrl = null;
}

function showStats(elapsedMs) {
  state.audioS = state.samplesScheduled / state.sampleRate;
  state.rtf = state.audioS > 0 ? elapsedMs / 1000 / state.audioS : null;
  if (state.ttfaMs !== null) $("ttfa").textContent = `${Math.round(state.ttfaMs)} ms`;
  if (state.rtf !== null) $("rtf").textContent = state.rtf.toFixed(2);
  $("duration").textContent = `${state.audioS.toFixed(2)} s`;
}

function schedule(pcm, nextTime) {
  const n = pcm.length;
  const samples = new Float32Array(n);
  for (let i = 0; i < n; i++) samples[i] = pcm[i] / 32768;
  const buffer = audioCtx.createBuffer(1, n, state.sampleRate);
  buffer.copyToChannel(samples, 0);
  const source = audioCtx.createBufferSource();
  source.buffer = buffer;
  source.connect(audioCtx.destination);
  const start = Math.max(nextTime, audioCtx.currentTime + 0.05);
  source.start(start);
  sources.push(source);
  source.onended = () => {
    sources = sources.filter((s) => s !== source);
  };
  return start + buffer.duration;
}

async function speak(event) {
  event.preventDefault();
  const input = $("text").value;
  if (!input.trim()) {
    showError("type some text first");
    return;
  }
  showError("");
  resetStats();
  setStatus("requesting");
  $("speak").disabled = true;
  $("stop").disabled = false;
  audioCtx = audioCtx || new AudioContext();
  await audioCtx.resume();
  controller = new AbortController();
  const t0 = performance.now();
  const parts = [];
  const request = { model, input, voice: $("voice").value, response_format: "pcm", stream: true };
  const conversation = conversationId();
  if (conversation) request.conversation = conversation;
  try {
    const resp = await fetch(api("v1/audio/speech"), {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(request),
      signal: controller.signal,
    });
    if (!resp.ok) {
      showError((await readError(resp)).text);
      setStatus("error");
      return;
    }
    state.sampleRate = Number(resp.headers.get("X-Sample-Rate")) || 24000;
    setStatus("playing");
    const reader = resp.body.getReader();
    let carry = null; // an odd trailing byte waits for the next read: samples are 16-bit
    let nextTime = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      let bytes = value;
      if (carry) {
        bytes = new Uint8Array(carry.length + value.length);
        bytes.set(carry);
        bytes.set(value, carry.length);
        carry = null;
      }
      if (bytes.length % 2) {
        carry = bytes.slice(bytes.length - 1);
        bytes = bytes.slice(0, bytes.length - 1);
      }
      const n = bytes.length / 2;
      if (!n) continue;
      const pcm = new Int16Array(bytes.slice().buffer);
      parts.push(pcm);
      if (state.ttfaMs === null) state.ttfaMs = performance.now() - t0;
      nextTime = schedule(pcm, nextTime);
      state.chunks += 1;
      state.bytes += bytes.length;
      state.samplesScheduled += n;
      showStats(performance.now() - t0);
    }
    showStats(performance.now() - t0);
    wavUrl = URL.createObjectURL(wavBlob(parts, state.sampleRate));
    $("download").href = wavUrl;
    $("download").hidden = false;
    if (conversation) await showTurnsAfterSpeech(conversation);
    setStatus("done");
  } catch (err) {
    if (err.name === "AbortError") {
      setStatus("stopped");
    } else {
      showError(`request failed: ${err.message}`);
      setStatus("error");
    }
  } finally {
    $("speak").disabled = false;
    $("stop").disabled = true;
    controller = null;
  }
}

function stop() {
  if (controller) controller.abort();
  for (const source of sources) source.stop();
  sources = [];
}

// The token from the link's fragment (#token=...), then removed from the address bar so it is not copied around.
function tokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const value = params.get("token");
  if (value !== null) history.replaceState(null, "", location.pathname + location.search);
  return value || "";
}

function countChars() {
  $("count").textContent = `${$("text").value.length} / 4096`;
}

async function refresh() {
  renderUploaded(await loadVoices());
}

function start() {
  $("token").value = tokenFromFragment();
  $("token").addEventListener("change", refresh);
  $("form").addEventListener("submit", speak);
  $("stop").addEventListener("click", stop);
  $("text").addEventListener("input", countChars);
  countChars();
  initVoices(loadVoices);
  initConversation();
  refresh();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
