"""The client side of the Hub stand-in tests, run as its own process: huggingface_hub reads HF_ENDPOINT, HF_HOME and
HF_TOKEN once, when `huggingface_hub.constants` is imported, so each environment gets a fresh interpreter.

`python -m tests.fakes.hub_client` reads a JSON list of steps on stdin (tokens travel there, never in argv) and
prints one line `RESULT <json>`: per step, what it returned, or the exception's type, message and `__cause__` chain.
Steps: `load` (AutoTokenizer + CsmForConditionalGeneration.from_pretrained, as csm_runtime loads a checkpoint),
`download` (hf_hub_download), `mimi` (moshi's Mimi file through hf_hub_download, then `loaders.get_mimi`),
`model_info`, `login` (huggingface_hub.login: what `hf auth login` does).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable

MARKER = "RESULT "


def _kwargs(step: dict) -> dict:
    return {k: step[k] for k in ("revision", "token") if k in step}


def load(step: dict) -> dict:
    import torch
    from transformers import AutoTokenizer, CsmForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(step["repo"], **_kwargs(step))
    model = CsmForConditionalGeneration.from_pretrained(step["repo"], torch_dtype=torch.float32, **_kwargs(step))
    cfg = model.config
    out = {
        "tokenizer_len": len(tok),
        "config": {
            k: getattr(cfg, k) for k in ("hidden_size", "num_hidden_layers", "text_vocab_size", "num_codebooks")
        },
        "commit": getattr(cfg, "_commit_hash", None),
    }
    if key := step.get("tensor"):
        out["tensor_sha256"] = hashlib.sha256(model.state_dict()[key].contiguous().numpy().tobytes()).hexdigest()
    return out


def download(step: dict) -> dict:
    import os

    from huggingface_hub import hf_hub_download

    path = hf_hub_download(step["repo"], step["filename"], **_kwargs(step))
    return {"path": path, "size": os.path.getsize(path)}


def mimi(step: dict) -> dict:
    from huggingface_hub import hf_hub_download
    from moshi.models import loaders

    path = hf_hub_download(loaders.DEFAULT_REPO, loaders.MIMI_NAME, **_kwargs(step))
    model = loaders.get_mimi(path, device="cpu", num_codebooks=32)
    return {"path": path, "params": sum(p.numel() for p in model.parameters()), "codebooks": model.num_codebooks}


def model_info(step: dict) -> dict:
    from huggingface_hub import model_info as info

    found = info(step["repo"], **_kwargs(step))
    return {"id": found.id, "sha": found.sha, "gated": found.gated, "files": [s.rfilename for s in found.siblings]}


def login(step: dict) -> dict:
    from huggingface_hub import constants
    from huggingface_hub import login as hf_login

    hf_login(token=step["token"], add_to_git_credential=False)
    return {"token_path": constants.HF_TOKEN_PATH}


STEPS: dict[str, Callable[[dict], dict]] = {
    "load": load,
    "download": download,
    "mimi": mimi,
    "model_info": model_info,
    "login": login,
}


def describe(exc: BaseException) -> dict:
    chain, cur = [], exc
    while cur is not None:
        status = getattr(getattr(cur, "response", None), "status_code", None)
        chain.append(
            {"type": f"{type(cur).__module__}.{type(cur).__qualname__}", "message": str(cur), "status": status}
        )
        cur = cur.__cause__
    return {**chain[0], "causes": chain[1:]}


def main() -> None:
    results = []
    for step in json.load(sys.stdin):
        try:
            results.append({"ok": STEPS[step["do"]](step)})
        except Exception as exc:  # noqa: BLE001 - the exception is the result
            results.append({"error": describe(exc)})
    print(MARKER + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
