#!/usr/bin/env bash
# `make gpu-check`: the whole GPU check as ONE command, for a GPU machine that can reach nothing (Python 3.12, its own
# torch 2.11 + CUDA 13; no moshi): installs the wheels of .whl/ (`make fetch-gpu-wheels`) into a temporary site
# directory, then runs each part in its own process under its own time limit, so one slow or broken part cannot
# starve the others, and writes everything under $OUT:
#   a. correctness  greedy codes == transformers generate on CUDA; eager == compiled == CUDA-graph replay (batch 1, 8);
#                   streaming audio == one-shot decode; a stream joining a running batch == alone
#   b. bench        csm-1b-random bf16 at batch 1, 8, 32, 64, compile x CUDA graphs, and transformers generate
#   c. autotune     `csm-runtime autotune --model csm-1b-random --quick`: profiles/<gpu-slug>.yaml + .png
#   d. summary      summary.md (one table) + results.json; the profile and its plot beside them; log.txt
# The device tool brings back at most 8 files from $OUT, so the parts' own records live in a work directory and are
# merged into results.json. Exit status: 0 when every part passed (or was skipped with its reason), 1 otherwise.
#
# GPU_CHECK_DRY_RUN=1 is the CPU dry run `make test` runs (tests/integration/test_gpu_check.py): tiny-random, tiny frame
# counts, no wheels, every CUDA part reported skipped with the reason, never faked.
#
#   OUT=/tmp/out scripts/gpu_check.sh                         # on the GPU machine (the device tool sets OUT)
#   GPU_CHECK_DRY_RUN=1 GPU_CHECK_PYTHON=.venv/bin/python OUT=/tmp/dry scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${GPU_CHECK_DRY_RUN:-0}
PY=${GPU_CHECK_PYTHON:-python3}
OUT=${OUT:-$PWD/.gpu-check}
WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/log.txt"
: >"$LOG"
export PYTHONUNBUFFERED=1 GPU_CHECK_DRY_RUN="$DRY" TOKENIZERS_PARALLELISM=false
# One CPU thread in the dry run: on a shared 2-core box, OpenMP's spinning threads make everything ~10x slower.
[ "$DRY" = 1 ] && export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
T0=$(date +%s)
say() { echo "gpu-check [$(($(date +%s) - T0)) s] $*" | tee -a "$LOG" >&2; }

# Seconds per part, caps rather than expectations. On the GPU machine they add up to 7 minutes; with the install and
# the summary the whole check stays inside its 8-minute budget however slow a part is.
if [ "$DRY" = 1 ]; then
  declare -A LIMIT=([env]=120 [correctness]=300 [bench]=300 [autotune]=400)
else
  declare -A LIMIT=([env]=30 [correctness]=100 [bench]=140 [autotune]=150)
fi
for kv in ${GPU_CHECK_LIMITS:-}; do LIMIT[${kv%%=*}]=${kv#*=}; done # e.g. GPU_CHECK_LIMITS="bench=240"

SITE=""
if [ "$DRY" != 1 ] && compgen -G ".whl/*.whl" >/dev/null; then
  SITE=${GPU_CHECK_SITE:-/tmp/gpu-check-site}
  say "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into $SITE"
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    >>"$LOG" 2>&1; then
    say "wheel install FAILED (see log.txt); going on with the machine's own packages"
    SITE=""
  fi
elif [ "$DRY" != 1 ]; then
  say "no .whl/ (make fetch-gpu-wheels): using the machine's own packages"
fi
export PYTHONPATH="${SITE:+$SITE:}$PWD${PYTHONPATH:+:$PYTHONPATH}"

exits="{"
run_part() {
  local name=$1 limit=${LIMIT[$1]} rc
  say "part $name (limit ${limit} s)"
  timeout --kill-after=15 "$limit" "$PY" scripts/gpu_check.py "$name" --work "$WORK" >>"$LOG" 2>&1
  rc=$?
  say "part $name: exit $rc"
  exits="$exits\"$name\": $rc, "
}
for part in env correctness bench autotune; do run_part "$part"; done
exits="${exits%, }}"
echo "$exits" >"$WORK/exits.json"
{
  printf '{'
  sep=""
  for k in "${!LIMIT[@]}"; do
    printf '%s"%s": %s' "$sep" "$k" "${LIMIT[$k]}"
    sep=", "
  done
  printf '}\n'
} >"$WORK/limits.json"
"$PY" scripts/gpu_check.py summary --work "$WORK" --out "$OUT" 2>>"$LOG"
rc=$?
say "done in $(($(date +%s) - T0)) s: $OUT ($(ls "$OUT" | tr '\n' ' '))"
[ -n "${GPU_CHECK_WORK:-}" ] || rm -rf "$WORK"
exit $rc
