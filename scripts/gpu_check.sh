#!/usr/bin/env bash
# `make gpu-check`: the whole GPU check as ONE command, for a GPU machine that can reach nothing (Python 3.12, its own
# torch 2.11 + CUDA 13; no moshi). It installs the wheels of .whl/ (`make fetch-gpu-wheels`) into a temporary site
# directory, or stops at once with one line when they are missing or do not install (the machine's own transformers
# 5.x and its missing moshi would fail every part). Then it runs each part in its own process under its own limit,
# in the order that loses the least to a limit (scripts/gpu_check_budget.py: the limits and their arithmetic):
#   env          versions, the GPU, the engine and moshi importing
#   correctness  eager: greedy codes == transformers generate; batch 1 vs 8 (a figure on CUDA); streaming audio ==
#                one-shot decode; a stream joining a running batch == alone
#   bench        transformers generate, then csm-1b-random bf16 eager at batch 1, 8, 32, 64
#   graphs       CUDA-graph replay == eager (batch 1, 8); a stream joining a graphed batch; graph rows, graphs
#                captured only for the buckets measured
#   autotune     `csm-runtime autotune --quick` (compile off): its rows stream into $OUT/autotune_rows.jsonl, and its
#                limit ends its whole process tree, the delivery check's server included
#   compiled     bf16 compiled vs eager (a figure), compiled graphs == compiled; compiled rows
#   summary      summary.md (a table: part, status, seconds used, limit) + results.json; the profile and its plot
# Every part but `compiled` runs with NO_TORCH_COMPILE=1: moshi compiles Mimi's rotary embedding on CUDA by itself,
# in every process, unless told not to. The device tool brings back at most 8 files from $OUT, so the parts' own
# records live in a work directory and are merged into results.json. Exit status: 0 when every part passed (or was
# skipped with its reason), 1 otherwise, 2 when the wheels are missing or do not install.
#
# GPU_CHECK_DRY_RUN=1 is the CPU dry run `make test` runs (tests/integration/test_gpu_check.py): this machine's
# packages (GPU_CHECK_PYTHON=.venv/bin/python), tiny-random, tiny frame counts, every CUDA part reported skipped with
# the reason, never faked.
#
#   OUT=/tmp/out scripts/gpu_check.sh                         # on the GPU machine (the device tool sets OUT)
#   GPU_CHECK_DRY_RUN=1 GPU_CHECK_PYTHON=.venv/bin/python OUT=/tmp/dry scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${GPU_CHECK_DRY_RUN:-0}
PY=${GPU_CHECK_PYTHON:-python3}
OUT=${OUT:-$PWD/.gpu-check}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: >"$LOG"
T0=$EPOCHREALTIME
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
say() { echo "gpu-check [$(elapsed "$T0") s] $*" | tee -a "$LOG" >&2; }
note() { echo "gpu-check [$(elapsed "$T0") s] $*" >>"$LOG"; } # the log only
stop() { say "$*"; exit 2; } # one line, then nothing else runs

if [ "$DRY" != 1 ] && ! compgen -G ".whl/*.whl" >/dev/null; then
  stop "no wheels in .whl/: run \`make fetch-gpu-wheels\` where there is internet, and carry .whl along"
fi
declarations=$("$PY" scripts/gpu_check_budget.py "$DRY") || stop "$PY cannot run scripts/gpu_check_budget.py"
eval "$declarations"
for kv in ${GPU_CHECK_LIMITS:-}; do LIMIT[${kv%%=*}]=${kv#*=}; done # e.g. GPU_CHECK_LIMITS="bench=90"
WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
mkdir -p "$WORK"
: >"$WORK/runs.tsv"
export PYTHONUNBUFFERED=1 GPU_CHECK_DRY_RUN="$DRY" TOKENIZERS_PARALLELISM=false
# One CPU thread in the dry run: on a shared 2-core box, OpenMP's spinning threads make everything ~10x slower.
[ "$DRY" = 1 ] && export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "${LIMIT[$1]}" "$2" "$3" "${4:-}" >>"$WORK/runs.tsv"; }

if [ "$DRY" = 1 ]; then
  record wheels 0.0 skipped "dry run: this machine's packages"
else
  SITE=${GPU_CHECK_SITE:-/tmp/gpu-check-site}
  n=$(compgen -G ".whl/*.whl" | wc -l)
  note "wheels: installing $n from .whl/ into $SITE (limit ${LIMIT[wheels]} s)"
  t=$EPOCHREALTIME
  timeout --kill-after="$KILL_AFTER" "${LIMIT[wheels]}" "$PY" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$SITE" .whl/*.whl >>"$LOG" 2>&1 ||
    stop "wheels from .whl/ did not install (exit $?: $(grep -v '^\s*$' "$LOG" | tail -1 | cut -c1-200)); see log.txt"
  record wheels "$(elapsed "$t")" 0 "$n installed from .whl/"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"

run_part() {
  local name=$1 limit=${LIMIT[$1]} t rc compile=(env NO_TORCH_COMPILE=1)
  [[ "$COMPILE_PARTS" == *" $name "* ]] && compile=(env -u NO_TORCH_COMPILE)
  [ "$name" = autotune ] && [ "${GPU_CHECK_AUTOTUNE_COMPILE:-off}" != off ] && compile=(env -u NO_TORCH_COMPILE)
  say "part $name (limit $limit s)"
  t=$EPOCHREALTIME
  timeout --kill-after="$KILL_AFTER" "$limit" "${compile[@]}" "$PY" scripts/gpu_check.py "$name" --work "$WORK" \
    --out "$OUT" --limit "$limit" >>"$LOG" 2>&1
  rc=$?
  record "$name" "$(elapsed "$t")" "$rc"
  say "part $name: exit $rc"
}
for part in "${PARTS[@]}"; do run_part "$part"; done
timeout --kill-after="$KILL_AFTER" "${LIMIT[summary]}" "$PY" scripts/gpu_check.py summary --work "$WORK" --out "$OUT" \
  2>>"$LOG"
rc=$?
say "done in $(elapsed "$T0") s: $OUT ($(ls "$OUT" | tr '\n' ' '))"
[ -n "${GPU_CHECK_WORK:-}" ] || rm -rf "$WORK"
exit $rc
