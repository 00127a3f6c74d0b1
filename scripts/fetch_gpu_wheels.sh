#!/usr/bin/env bash
# `make fetch-gpu-wheels`: the wheels `make gpu-check` installs on a GPU machine that can reach nothing (Python 3.12,
# its own torch 2.11 + CUDA 13, transformers 5.x, huggingface_hub 1.x, no moshi). Downloaded here for cp312
# manylinux x86_64 into the ignored .whl/ at the versions this project pins (read from .venv, which `make setup`
# built from requirements/), --no-deps: only what that machine lacks or has at an incompatible version.
#
#   transformers        the CSM model code at our pin (the machine's 5.x differs)
#   tokenizers          transformers 4.57 needs <= 0.23.0 (the machine has a newer one)
#   huggingface_hub     transformers 4.57 needs < 1.0 (the machine has 1.x)
#   moshi               the Mimi codec (absent there); it declares torch<2.10, hence --no-deps on install
#   pydantic, pydantic_core, annotated_types, typing_inspection, typing_extensions
#                       the profile schema and FastAPI's models (absent there; typing_extensions at our pin)
#   fastapi, starlette, uvicorn, opentelemetry_api
#                       the real server the autotune delivery check serves (absent there)
#   soundfile, cffi, pycparser
#                       the server's audio encoders (absent there)
# Everything else the runtime imports is on that machine already (numpy, safetensors, sentencepiece, einops, pyyaml,
# psutil, nvidia-ml-py, prometheus-client, matplotlib, rich, httpx, anyio, h11, click, annotated-doc, hf-xet).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=${DEST:-.whl}
LIMIT_MIB=60
NAMES="transformers tokenizers huggingface_hub moshi pydantic pydantic_core annotated_types typing_inspection
typing_extensions fastapi starlette uvicorn opentelemetry_api soundfile cffi pycparser"

[ -x "$PY" ] || { echo "fetch-gpu-wheels: $PY is missing: run \`make setup\` first" >&2; exit 1; }
if [ -d .git/info ] && ! grep -qxF '/.whl/' .git/info/exclude 2>/dev/null; then
  echo '/.whl/' >>.git/info/exclude # never committed; the device tool carries it when asked
fi
# name==version of each, as installed in the pinned .venv
pins=$("$PY" - $NAMES <<'PY'
import importlib.metadata as md, sys
print(" ".join(f"{n}=={md.version(n)}" for n in sys.argv[1:]))
PY
)
rm -rf "$DEST"
mkdir -p "$DEST"
platforms=""
for n in 28 27 24 17 5; do platforms="$platforms --platform manylinux_2_${n}_x86_64"; done
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux2014_x86_64 --platform manylinux1_x86_64 $platforms -d "$DEST" $pins \
  2> >(grep -v "is ignored: it is neither" >&2)
size=$(du -sm "$DEST" | cut -f1)
ls -1 "$DEST"
echo "fetch-gpu-wheels: $(ls "$DEST" | wc -l) wheels, ${size} MiB in $DEST ($pins)"
if [ "$size" -gt "$LIMIT_MIB" ]; then
  echo "fetch-gpu-wheels: $DEST is ${size} MiB, over the ${LIMIT_MIB} MiB a device call carries" >&2
  exit 1
fi
