// A Record / Stop pair of buttons around startCapture: shows the length while recording, stops by itself at
// `maxS`, and hands the clip to `onClip`. window.playground.recording / recordingS follow the one running.

import { state } from "./pg-common.js";
import { startCapture } from "./pg-audio.js";

export function recorderControl({ record, stop, status, maxS, onStart, onClip, onError }) {
  let capture = null;
  let stopping = false;

  async function finish() {
    if (!capture || stopping) return;
    stopping = true;
    stop.disabled = true;
    try {
      const clip = await capture.stop();
      status.textContent = `recorded ${clip.seconds.toFixed(2)} s`;
      onClip(clip, capture.rate);
    } catch (err) {
      onError(`recording failed: ${err.message}`);
    } finally {
      capture = null;
      stopping = false;
      state.recording = false;
      record.disabled = false;
    }
  }

  async function begin() {
    record.disabled = true;
    onStart();
    state.recordingS = 0;
    status.textContent = "starting the microphone…";
    try {
      capture = await startCapture((seconds) => {
        state.recordingS = seconds;
        status.textContent = `recording… ${seconds.toFixed(1)} s`;
        if (seconds >= maxS) finish();
      });
      state.recording = true;
      stop.disabled = false;
      status.textContent = "recording…";
    } catch (err) {
      record.disabled = false;
      status.textContent = "no clip";
      onError(`cannot record: ${err.message}`);
    }
  }

  record.addEventListener("click", begin);
  stop.addEventListener("click", finish);
}
