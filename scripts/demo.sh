#!/usr/bin/env bash
# `make demo`: the whole flow on this machine, with no GPU and no vast.ai account:
#   provision (provider local, model tiny-random) -> quick autotune -> serve -> generate demo.wav -> teardown -> cost.
# State lives in .demo/ (its own DEPLOY_HOME), so the operator's ledger is never touched. The local "box" runs the
# server from this checkout's .venv (runtime mode `current`): nothing is installed, which keeps the demo short.
set -euo pipefail
cd "$(dirname "$0")/.."

DEPLOY=.venv/bin/deploy
[ -x "$DEPLOY" ] || { echo "demo: $DEPLOY is missing: run \`make setup\` first" >&2; exit 1; }
export DEPLOY_HOME="$PWD/.demo/home"
rm -rf .demo demo.wav
mkdir -p .demo

# The sweep: `--quick` (batches 1-4) with torch.compile off: compiling costs ~40 s per setting on a CPU, and a real
# GPU box runs the full sweep anyway. DEMO_AUTOTUNE_ARGS overrides it, DEMO_TEXT the sentence.
AUTOTUNE_ARGS=${DEMO_AUTOTUNE_ARGS---compile off}
TEXT=${DEMO_TEXT:-Hello from csm-deploy. This audio was generated on this machine.}
MAX_AUDIO_MS=${DEMO_MAX_AUDIO_MS:-2000} # tiny-random's weights are random: cap the audio it speaks
# DEMO_LOAD=bursts runs the demo on a machine loaded in bursts: one busy loop per core, busy 0.5 s then idle 0.5 s,
# for 15 minutes at most. Autotune then records what the server delivers under that load; the demo still passes.
LOAD=${DEMO_LOAD:-}
BURSTS=()

step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
cleanup() {
  rc=$?
  for pid in "${BURSTS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ $rc -ne 0 ]; then
    echo "demo: failed (exit $rc); ending whatever it started: deploy teardown --all --yes" >&2
    "$DEPLOY" teardown --all --yes >&2 || true
  fi
}
trap cleanup EXIT
if [ "$LOAD" = bursts ]; then
  for _ in $(seq "$(nproc)"); do
    .venv/bin/python -c 'import time
end = time.monotonic() + 900
while time.monotonic() < end:
    busy = time.monotonic() + 0.5
    while time.monotonic() < busy:
        pass
    time.sleep(0.5)' &
    BURSTS+=($!)
  done
  echo "demo: CPU load in bursts on $(nproc) core(s) (pids ${BURSTS[*]})" >&2
elif [ -n "$LOAD" ]; then
  echo "demo: DEMO_LOAD takes 'bursts', got '$LOAD'" >&2
  exit 2
fi

step "1/4 provision: local box, tiny-random, quick autotune, start, /ready"
"$DEPLOY" provision --provider local --model tiny-random --autotune --autotune-quick \
  --autotune-args "$AUTOTUNE_ARGS" | tee .demo/provision.txt
id=$(sed -n 's/^ready: rental \([0-9][0-9]*\) = .*/\1/p' .demo/provision.txt)
[ -n "$id" ] || { echo "demo: provision printed no rental id" >&2; exit 1; }

step "2/4 generate: rental $id -> demo.wav"
"$DEPLOY" generate "$id" "$TEXT" -o demo.wav --max-audio-ms "$MAX_AUDIO_MS"

step "3/4 teardown: rental $id"
"$DEPLOY" teardown "$id"

step "4/4 cost"
"$DEPLOY" cost

echo
echo "demo: wrote demo.wav ($(stat -c %s demo.wav) bytes) in ${SECONDS} s; ledger and logs in .demo/home"
