from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from deploy import output
from deploy.commands import options as c
from deploy.errors import NotFoundError


def autotune(
    rental_id: c.RentalId,
    quick: Annotated[
        bool, typer.Option("--quick", help="compile off vs default, batch 1-4: minutes, not an hour")
    ] = False,
    model: Annotated[
        str, typer.Option(help="model to sweep with; csm-1b-random has CSM-1B's shape and needs no download")
    ] = "csm-1b-random",
    out: Annotated[
        Path, typer.Option("--out", help="local profiles directory the YAML and PNG are copied into")
    ] = Path("profiles"),
    runtime: Annotated[
        str | None, typer.Option(help="how to run csm-runtime on the box [default: the rental's, else csm-runtime]")
    ] = None,
    sweep_args: Annotated[
        str, typer.Option("--sweep-args", help="extra `csm-runtime autotune` options, e.g. '--batches 1,4,16'")
    ] = "",
    timeout: Annotated[float, typer.Option(help="seconds the sweep may take on the box")] = 3600.0,
    json_: c.Json = False,
) -> None:
    """Sweep compile, CUDA-graph and batch settings on a rental; copy profiles/<gpu>.yaml and .png back here.

    The sweep's progress streams to stderr; the result is recorded in the ledger (event + the rental's meta).

    Examples:
      deploy autotune 3 --quick
      deploy autotune 3 --model sesame/csm-1b --sweep-args "--ttfa-target-ms 300"
    """
    from deploy.ledger import records
    from deploy.providers import provider_for
    from deploy.provision.autotune import run_autotune
    from deploy.provision.hub import BOX_FILE

    s = c.settings()
    with c.open_ledger() as ledger:
        rental = ledger.require(rental_id)
        if not rental.is_open:
            raise NotFoundError(f"rental {rental_id} is {rental.status}: nothing to autotune on")
        runtime = runtime or runtime_on_box(rental.server.runtime_mode, s.remote_dir)
        ledger.event(rental_id, "autotune", f"start: model {model}, {'quick' if quick else 'full'} sweep")
        host = provider_for(rental, s).host(rental, s, ledger)
        try:
            result = run_autotune(
                host,
                model=model,
                quick=quick,
                out_dir=out,
                workdir=s.remote_dir,
                runtime=runtime,
                # the Hub token `provision` put in the box dir (the sweep runs there), for a gated checkpoint
                extra=[
                    *shlex.split(sweep_args),
                    *(["--hf-token-file", BOX_FILE] if rental.server.hf_token else []),
                ],
                timeout=timeout,
                log=output.progress,
            )
        except Exception as exc:
            ledger.event(rental_id, "autotune_failed", " ".join(str(exc).split())[:500])
            raise
        finally:
            host.close()
        chosen = result.summary.get("settings", {})
        ledger.event(
            rental_id,
            "autotuned",
            f"{result.slug}: {result.summary.get('chosen')} max_streams {chosen.get('max_streams')} -> {result.profile}",
        )
        tuned = {
            "slug": result.slug,
            "path": str(result.profile),
            "sha256": result.summary.get("sha256"),
            "chosen": result.summary.get("chosen"),
            "settings": chosen,
            "realtime": result.summary.get("realtime"),
            "model": model,
            "quick": quick,
        }
        ledger.update_meta(rental_id, **records.profile_record(tuned))
    if json_:
        output.emit_json(result.as_dict())
    else:
        output.emit_text(
            f"profile {result.profile}" + (f" and {result.plot}" if result.plot else "") + f" ({result.slug})\n"
            f"chosen {result.summary.get('chosen')}: max_streams {chosen.get('max_streams')}, compile "
            f"{chosen.get('compile')}, cuda_graphs {chosen.get('cuda_graphs')}, dtype {chosen.get('dtype')}\n"
            f"why: {result.summary.get('why')}"
        )


def runtime_on_box(mode: str | None, remote_dir: str) -> str:
    """The csm-runtime the provision flow installed on this rental (its `runtime_mode` in the ledger), else the one
    on the box's PATH."""
    from deploy.provision.layout import BoxLayout

    return BoxLayout.for_remote_dir(remote_dir, mode).runtime_bin if mode else "csm-runtime"
