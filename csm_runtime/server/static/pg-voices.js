// The Voices panel: a clip recorded from the microphone or a file chosen here, its transcript and a name; Save
// posts them to /v1/voices (multipart) and the new voice is selected for Speak. The voices uploaded to the server
// are listed with Delete. A refused upload shows the server's message.

import { $, alertIn, api, headers, readError, state } from "./pg-common.js";
import { recorderControl } from "./pg-recorder.js";

const MAX_CLIP_S = 30; // the server takes 1 to 30 s
let clip = null; // {blob, filename}
let previewUrl = null;
let loadVoices = async () => []; // the voice list's reload (playground.js), given to initVoices

const showError = (message) => alertIn("voice-error", "voiceError", message);

function setStatus(status) {
  state.voiceStatus = status;
  $("voices-panel").dataset.status = status;
}

function preview(blob) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = blob ? URL.createObjectURL(blob) : null;
  $("clip-preview").hidden = !previewUrl;
  if (previewUrl) $("clip-preview").src = previewUrl;
  else $("clip-preview").removeAttribute("src");
}

function useRecording(recorded, rate) {
  clip = { blob: recorded.blob, filename: "recording.wav" };
  Object.assign(state, {
    clipSource: "recording",
    recordedRate: rate,
    recordedSamples: recorded.samples,
    recordedS: recorded.seconds,
    recordedPeak: recorded.peak,
  });
  $("voice-file").value = "";
  preview(recorded.blob);
}

function useFile() {
  const file = $("voice-file").files[0];
  if (!file) return;
  showError("");
  clip = { blob: file, filename: file.name };
  state.clipSource = "file";
  $("record-status").textContent = `file: ${file.name} (${Math.ceil(file.size / 1024)} KiB)`;
  preview(file);
}

async function save(event) {
  event.preventDefault();
  if (!clip) return showError("record a clip or choose a file first");
  showError("");
  setStatus("saving");
  $("voice-save").disabled = true;
  const form = new FormData();
  const name = $("voice-name").value.trim();
  form.append("name", name);
  form.append("transcript", $("voice-transcript").value.trim());
  form.append("speaker", $("voice-speaker").value || "0");
  form.append("description", $("voice-description").value.trim());
  form.append("replace", $("voice-replace").checked ? "true" : "false");
  form.append("audio", clip.blob, clip.filename);
  try {
    const resp = await fetch(api("v1/voices"), { method: "POST", headers: headers(false), body: form });
    if (!resp.ok) {
      const error = await readError(resp);
      state.lastVoiceError = { status: error.status, code: error.code, message: error.message };
      showError(error.text);
      setStatus("error");
      return;
    }
    const voice = await resp.json();
    state.lastVoice = voice;
    state.voicesSaved += 1;
    $("voice-saved").textContent = `saved ${voice.id}: ${Number(voice.clip_s).toFixed(2)} s, speaker ${voice.speaker}`;
    renderUploaded(await loadVoices(voice.id));
    setStatus("saved");
  } catch (err) {
    showError(`request failed: ${err.message}`);
    setStatus("error");
  } finally {
    $("voice-save").disabled = false;
  }
}

async function remove(id) {
  showError("");
  try {
    const resp = await fetch(api(`v1/voices/${encodeURIComponent(id)}`), { method: "DELETE", headers: headers() });
    if (!resp.ok) return showError((await readError(resp)).text);
    state.voicesDeleted += 1;
    renderUploaded(await loadVoices());
  } catch (err) {
    showError(`request failed: ${err.message}`);
  }
}

// The voices this server holds from uploads (the ones from its YAML files are read-only).
export function renderUploaded(voices) {
  const uploaded = voices.filter((v) => v.source === "upload");
  $("voice-list").replaceChildren(
    ...uploaded.map((v) => {
      const item = document.createElement("li");
      const label = document.createElement("span");
      const length = v.clip_s ? ` · ${Number(v.clip_s).toFixed(1)} s` : "";
      label.textContent = `${v.id} · speaker ${v.speaker}${length}`;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "small";
      button.textContent = "Delete";
      button.dataset.voice = v.id;
      button.addEventListener("click", () => remove(v.id));
      item.append(label, button);
      return item;
    }),
  );
}

export function initVoices(reloadVoices) {
  loadVoices = reloadVoices;
  $("voice-form").addEventListener("submit", save);
  $("voice-file").addEventListener("change", useFile);
  recorderControl({
    record: $("record"),
    stop: $("record-stop"),
    status: $("record-status"),
    maxS: MAX_CLIP_S,
    onStart: () => {
      showError("");
      clip = null;
      state.clipSource = null;
      preview(null);
    },
    onClip: useRecording,
    onError: showError,
  });
}
