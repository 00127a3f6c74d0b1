// The playground: stream `pcm` from /v1/audio/speech and play it through Web Audio as it arrives.
// Every URL is relative to the page, so it works on http or https, directly or behind the gateway.
// window.playground holds the counters the browser test reads (chunks, samples scheduled, TTFA, ...).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const api = (path) => new URL(path, document.baseURI).toString();
  const state = (window.playground = {
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
  });
  let token = "";
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

  function headers() {
    const h = { "Content-Type": "application/json" };
    if (token) h.Authorization = `Bearer ${token}`;
    return h;
  }

  async function errorMessage(resp) {
    let detail = resp.statusText;
    try {
      const body = await resp.json();
      detail = (body && body.error && body.error.message) || detail;
    } catch (_) {
      // not JSON: keep the status text
    }
    if (resp.status === 401) return `401 Unauthorized: ${detail}. Check the token.`;
    return `${resp.status}: ${detail}`;
  }

  // The token from the link's fragment (#token=...), then removed from the address bar so it is not copied around.
  function tokenFromFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    const value = params.get("token");
    if (value !== null) history.replaceState(null, "", location.pathname + location.search);
    return value || "";
  }

  async function loadVoices() {
    showError("");
    setStatus("loading");
    const select = $("voice");
    try {
      const resp = await fetch(api("v1/voices"), { headers: headers(), cache: "no-store" });
      if (!resp.ok) {
        showError(await errorMessage(resp));
        setStatus("error");
        return;
      }
      const body = await resp.json();
      state.voices = body.voices.map((v) => v.id);
      const previous = select.value;
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
    } catch (err) {
      showError(`cannot reach the server: ${err.message}`);
      setStatus("error");
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

  function wavBlob(parts, rate) {
    const bytes = parts.reduce((n, p) => n + p.byteLength, 0);
    const head = new DataView(new ArrayBuffer(44));
    const text = (offset, s) => [...s].forEach((c, i) => head.setUint8(offset + i, c.charCodeAt(0)));
    text(0, "RIFF");
    head.setUint32(4, 36 + bytes, true);
    text(8, "WAVE");
    text(12, "fmt ");
    head.setUint32(16, 16, true);
    head.setUint16(20, 1, true);
    head.setUint16(22, 1, true);
    head.setUint32(24, rate, true);
    head.setUint32(28, rate * 2, true);
    head.setUint16(32, 2, true);
    head.setUint16(34, 16, true);
    text(36, "data");
    head.setUint32(40, bytes, true);
    return new Blob([head, ...parts], { type: "audio/wav" });
  }

  async function speak(event) {
    event.preventDefault();
    token = $("token").value.trim();
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
    try {
      const resp = await fetch(api("v1/audio/speech"), {
        method: "POST",
        headers: headers(),
        body: JSON.stringify({ model, input, voice: $("voice").value, response_format: "pcm", stream: true }),
        signal: controller.signal,
      });
      if (!resp.ok) {
        showError(await errorMessage(resp));
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
        const samples = new Float32Array(n);
        for (let i = 0; i < n; i++) samples[i] = pcm[i] / 32768;
        const buffer = audioCtx.createBuffer(1, n, state.sampleRate);
        buffer.copyToChannel(samples, 0);
        const source = audioCtx.createBufferSource();
        source.buffer = buffer;
        source.connect(audioCtx.destination);
        const start = Math.max(nextTime, audioCtx.currentTime + 0.05);
        source.start(start);
        nextTime = start + buffer.duration;
        sources.push(source);
        source.onended = () => {
          sources = sources.filter((s) => s !== source);
        };
        state.chunks += 1;
        state.bytes += bytes.length;
        state.samplesScheduled += n;
        showStats(performance.now() - t0);
      }
      showStats(performance.now() - t0);
      wavUrl = URL.createObjectURL(wavBlob(parts, state.sampleRate));
      $("download").href = wavUrl;
      $("download").hidden = false;
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

  function countChars() {
    $("count").textContent = `${$("text").value.length} / 4096`;
  }

  document.addEventListener("DOMContentLoaded", () => {
    token = tokenFromFragment();
    $("token").value = token;
    $("token").addEventListener("change", () => {
      token = $("token").value.trim();
      loadVoices();
    });
    $("form").addEventListener("submit", speak);
    $("stop").addEventListener("click", stop);
    $("text").addEventListener("input", countChars);
    countChars();
    loadVoices();
  });
})();
