// The conversation view: an id (typed, or New), which Speak sends as `conversation` so the server adds the earlier
// turns as context and appends the new one; the turns as the server holds them; the other party's turn (text, and
// a recorded clip when there is one); Reset deletes the conversation on the server.

import { $, alertIn, api, headers, readError, state } from "./pg-common.js";
import { blobBase64 } from "./pg-audio.js";
import { recorderControl } from "./pg-recorder.js";

const TURN_CLIP_MAX_S = 30; // the server takes a clip of 1 to 30 s, as for a voice
let turnClip = null;

export function conversationId() {
  const id = $("conversation").value.trim();
  state.conversation = id || null;
  return id;
}

const showError = (message) => alertIn("conversation-error", "conversationError", message);

function setStatus(status) {
  state.conversationStatus = status;
  $("conversation-panel").dataset.status = status;
}

function renderTurns(body) {
  state.turns = body ? body.turns : [];
  const list = $("turns");
  list.replaceChildren(
    ...state.turns.map((turn) => {
      const item = document.createElement("li");
      item.dataset.source = turn.source;
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = `${turn.source === "generated" ? "server" : "them"} · speaker ${turn.speaker}`;
      const text = document.createElement("span");
      text.className = "said";
      text.textContent = turn.text;
      const frames = document.createElement("span");
      frames.className = "hint";
      frames.textContent = turn.frames ? `${((turn.frames * 80) / 1000).toFixed(2)} s` : "text only";
      item.append(who, text, frames);
      return item;
    }),
  );
  $("turns-empty").hidden = state.turns.length > 0;
  $("conversation-expiry").textContent =
    body && body.expires_at ? `kept until ${new Date(body.expires_at * 1000).toLocaleTimeString()} unless used` : "";
}

// GET the conversation; a 404 is a conversation with no turns yet (or one that expired), not an error.
async function fetchTurns(id) {
  const resp = await fetch(api(`v1/conversations/${encodeURIComponent(id)}`), { headers: headers(), cache: "no-store" });
  if (resp.status === 404) return null;
  if (!resp.ok) throw new Error((await readError(resp)).text);
  return resp.json();
}

export async function refreshTurns() {
  const id = conversationId();
  showError("");
  if (!id) {
    renderTurns(null);
    return;
  }
  try {
    renderTurns(await fetchTurns(id));
  } catch (err) {
    showError(err.message);
  }
}

// After a response in conversation `id`: the server appends its turn as the stream ends; wait (briefly) for it.
export async function showTurnsAfterSpeech(id) {
  const before = state.turns.length;
  showError("");
  try {
    for (let i = 0; i < 20; i++) {
      const body = await fetchTurns(id);
      if (body && body.turns.length !== before) return renderTurns(body);
      if (i === 19) return renderTurns(body);
      await new Promise((r) => setTimeout(r, 100));
    }
  } catch (err) {
    showError(err.message);
  }
}

function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return `c-${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

async function addTurn(event) {
  event.preventDefault();
  const id = conversationId();
  if (!id) return showError("set a conversation id first (New makes one)");
  const text = $("turn-text").value.trim();
  if (!text) return showError("type what the other party says");
  showError("");
  setStatus("adding");
  $("turn-add").disabled = true;
  try {
    const body = { speaker: Number($("turn-speaker").value || 0), text };
    if (turnClip) body.audio = await blobBase64(turnClip.blob);
    const resp = await fetch(api(`v1/conversations/${encodeURIComponent(id)}/turns`), {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(body),
    });
    if (!resp.ok) {
      showError((await readError(resp)).text);
      setStatus("error");
      return;
    }
    renderTurns(await resp.json());
    state.turnsAdded += 1;
    $("turn-text").value = "";
    clearClip();
    setStatus("idle");
  } catch (err) {
    showError(`request failed: ${err.message}`);
    setStatus("error");
  } finally {
    $("turn-add").disabled = false;
  }
}

async function reset() {
  const id = conversationId();
  if (!id) return;
  showError("");
  setStatus("resetting");
  try {
    const resp = await fetch(api(`v1/conversations/${encodeURIComponent(id)}`), {
      method: "DELETE",
      headers: headers(),
    });
    if (!resp.ok && resp.status !== 404) {
      showError((await readError(resp)).text);
      setStatus("error");
      return;
    }
    state.conversationResets += 1;
    renderTurns(null);
    setStatus("idle");
  } catch (err) {
    showError(`request failed: ${err.message}`);
    setStatus("error");
  }
}

function clearClip() {
  turnClip = null;
  state.turnClipS = 0;
  $("turn-clip-status").textContent = "text only";
  $("turn-clip-clear").hidden = true;
}

export function initConversation() {
  $("conversation-new").addEventListener("click", () => {
    $("conversation").value = newId();
    refreshTurns();
  });
  $("conversation").addEventListener("change", refreshTurns);
  $("conversation-reset").addEventListener("click", reset);
  $("turn-form").addEventListener("submit", addTurn);
  $("turn-clip-clear").addEventListener("click", clearClip);
  recorderControl({
    record: $("turn-record"),
    stop: $("turn-record-stop"),
    status: $("turn-clip-status"),
    maxS: TURN_CLIP_MAX_S,
    onStart: () => showError(""),
    onClip: (clip) => {
      turnClip = clip;
      state.turnClipS = clip.seconds;
      $("turn-clip-clear").hidden = false;
    },
    onError: showError,
  });
  clearClip();
  renderTurns(null);
}
