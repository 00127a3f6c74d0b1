from __future__ import annotations

from typing import Annotated

import typer

from deploy import output
from deploy.commands import options as c


def offers(
    gpu: c.Gpu_,
    max_price: c.MaxPrice = None,
    min_reliability: Annotated[float | None, typer.Option(help="Lowest reliability, 0..1.")] = None,
    min_cuda: Annotated[float | None, typer.Option(help="Lowest CUDA version the driver supports.")] = None,
    disk: c.Disk = None,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 10,
    provider: c.Provider_ = "vast",
    json_: c.Json = False,
) -> None:
    """List rentable offers for a GPU, cheapest first.

    Examples:
      deploy offers --gpu 4090
      deploy offers --gpu A100 --max-price 1.5 --min-reliability 0.99 --json
    """
    from deploy.provision.driver import search_offers
    from deploy.provision.options import ProvisionOptions

    s = c.settings()
    options = ProvisionOptions.from_settings(
        s,
        gpu=c.gpu(gpu),
        max_price=c.price(max_price),
        min_reliability=min_reliability,
        min_cuda=min_cuda,
        disk_gb=c.positive("--disk", disk),
    )
    found = search_offers(c.provider(provider), options, limit=max(1, limit))[: max(1, limit)]
    if json_:
        output.emit_json([o.as_dict() for o in found])
        return
    rows = [
        (o.id, o.gpu_name, f"{o.price_usd_h:.3f}", o.reliability, o.cuda, o.disk_gb, o.location, o.host_id)
        for o in found
    ]
    cols = ("offer", "gpu", "USD/h", "reliability", "cuda", "disk GB", "location", "host")
    output.emit_table(f"{len(found)} {provider} offers for {gpu}", cols, rows)
