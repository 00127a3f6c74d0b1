// Audio in the page: record the microphone to samples (an AudioWorklet, no MediaRecorder: chromium's is webm/opus,
// which the server's decoder does not read), resample to 24 kHz, and write a 16-bit PCM mono WAV, which every
// libsndfile build decodes.

export const CLIP_RATE = 24000;

export function wavBlob(parts, rate) {
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

export function toInt16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = s < 0 ? s * 32768 : s * 32767;
  }
  return out;
}

// Web Audio's own resampler, offline: `samples` at `rate` -> mono at `target`.
export async function resample(samples, rate, target = CLIP_RATE) {
  if (rate === target || !samples.length) return samples;
  const length = Math.max(1, Math.round((samples.length * target) / rate));
  const offline = new OfflineAudioContext(1, length, target);
  const buffer = offline.createBuffer(1, samples.length, rate);
  buffer.copyToChannel(samples, 0);
  const source = offline.createBufferSource();
  source.buffer = buffer;
  source.connect(offline.destination);
  source.start();
  return (await offline.startRendering()).getChannelData(0);
}

export function blobBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// Start recording the microphone. `onProgress(seconds)` hears the length so far. Resolves to {rate, stop()}, where
// stop() ends the capture and resolves to a clip {blob (WAV at 24 kHz), samples (at 24 kHz), seconds, peak}.
export async function startCapture(onProgress) {
  if (!window.isSecureContext || !navigator.mediaDevices) {
    throw new Error("recording needs https or a localhost address (an SSH tunnel); upload a file instead");
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const ctx = new AudioContext();
  try {
    await ctx.audioWorklet.addModule(new URL("pg-recorder-worklet.js", import.meta.url));
  } catch (err) {
    stream.getTracks().forEach((t) => t.stop());
    await ctx.close();
    throw err;
  }
  const source = ctx.createMediaStreamSource(stream);
  // No outputs: chromium pulls such a node by itself, and nothing reaches the speakers.
  const node = new AudioWorkletNode(ctx, "pg-recorder", {
    numberOfInputs: 1,
    numberOfOutputs: 0,
    channelCount: 1,
    channelCountMode: "explicit",
  });
  const blocks = [];
  let count = 0;
  let flushed = null;
  node.port.onmessage = (event) => {
    if (event.data === "flushed") {
      if (flushed) flushed();
      return;
    }
    blocks.push(event.data);
    count += event.data.length;
    onProgress(count / ctx.sampleRate);
  };
  source.connect(node);
  await ctx.resume();

  async function stop() {
    await new Promise((resolve) => {
      flushed = resolve;
      node.port.postMessage("flush");
      setTimeout(resolve, 1000); // a context that stopped rendering never answers: keep what came
    });
    source.disconnect();
    stream.getTracks().forEach((t) => t.stop());
    const rate = ctx.sampleRate;
    await ctx.close();
    const raw = new Float32Array(count);
    let offset = 0;
    for (const block of blocks) {
      raw.set(block, offset);
      offset += block.length;
    }
    const samples = await resample(raw, rate);
    let peak = 0;
    for (const s of samples) peak = Math.max(peak, Math.abs(s));
    const seconds = samples.length / CLIP_RATE;
    return { blob: wavBlob([toInt16(samples)], CLIP_RATE), samples: samples.length, seconds, peak };
  }

  return { rate: ctx.sampleRate, stop };
}
