"""`GET /api/v1/instances/`: vast's paged instance listing, answered the way vastai 1.9.1 asks for it.

What the CLI sends (`api/instances.py` show_instances, `cli/commands/instances.py` show__instances): query arguments
`select_filters` (JSON, e.g. `{"label": {"in": ["x"]}}` for `--label x`), `order_by` (JSON, `[{"col": "id", "dir":
"asc"}]` by default, id always last), `limit` (the CLI clamps `--limit` to 1-25 and asks 25 a page by default) and
`after_token` (the previous page's `next_token`, or `--next-token`). What it reads back: `instances`, `next_token`
(null on the last page), `total_instances`, `label_counts`. Without `--limit`/`--next-token` the CLI fetches every page
back to back (its own three quick retries on a 429 only), so an account of more than 25 instances meets vast's 1 s
per-endpoint limit on page 2. Tokens are opaque to the client; vast's are base64 JSON (`eyJ2YWx1ZXMi...`, as in the
CLI's help), here `{"values": {<order column>: <last row's value>, ...}}`: keyset paging, so an instance created or
destroyed between two pages neither repeats nor hides another.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

MAX_PAGE = 25
ORDERABLE = ("id", "start_date", "dph_total")  # numeric columns this emulator can order and page by


class BadQuery(ValueError):
    """A query vast would answer 400 to (a filter or order it does not know, a token it did not issue)."""


def _json_arg(query: dict[str, str], name: str, default: Any) -> Any:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return json.loads(raw)
    except ValueError:
        raise BadQuery(f"{name} is not JSON") from None


def _matcher(filters: Any) -> Callable[[dict[str, Any]], bool]:
    """`{"col": {"in": [...]}}` or `{"col": {"eq": v}}`, every column must match."""
    if not isinstance(filters, dict):
        raise BadQuery("select_filters must be an object")
    tests: list[Callable[[dict[str, Any]], bool]] = []
    for col, cond in filters.items():
        if not isinstance(cond, dict) or len(cond) != 1:
            raise BadQuery(f"filter on {col!r} must be one operator")
        ((op, value),) = cond.items()
        if op == "in" and isinstance(value, list):
            tests.append(lambda row, c=col, v=value: row.get(c) in v)
        elif op == "eq":
            tests.append(lambda row, c=col, v=value: row.get(c) == v)
        else:
            raise BadQuery(f"unsupported filter operator {op!r} on {col!r}")
    return lambda row: all(t(row) for t in tests)


def _order(order_by: Any) -> list[tuple[str, bool]]:
    if not isinstance(order_by, list) or not order_by:
        raise BadQuery("order_by must be a list")
    cols = []
    for item in order_by:
        col, direction = (item or {}).get("col"), str((item or {}).get("dir") or "asc").lower()
        if col not in ORDERABLE or direction not in ("asc", "desc"):
            raise BadQuery(f"cannot order by {col!r} {direction}")
        cols.append((col, direction == "desc"))
    if "id" not in [c for c, _ in cols]:
        cols.append(("id", False))
    return cols


def _key(values: dict[str, Any], cols: list[tuple[str, bool]]) -> tuple[float, ...]:
    return tuple((-1 if desc else 1) * float(values.get(col) or 0) for col, desc in cols)


def encode_token(values: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps({"values": values}).encode()).decode()


def decode_token(token: str) -> dict[str, Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(token.encode()))["values"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise BadQuery("after_token is not a token this listing issued") from None
    if not isinstance(values, dict):
        raise BadQuery("after_token is not a token this listing issued")
    return values


def page(rows: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
    """One page of `rows` (the account's live instance records) for the CLI's query; raises BadQuery."""
    keep = _matcher(_json_arg(query, "select_filters", {}))
    cols = _order(_json_arg(query, "order_by", [{"col": "id", "dir": "asc"}]))
    try:
        limit = max(1, min(int(query.get("limit") or MAX_PAGE), MAX_PAGE))
    except ValueError:
        raise BadQuery("limit must be a number") from None
    matching = sorted((r for r in rows if keep(r)), key=lambda r: _key(r, cols))
    token = query.get("after_token")
    after = [r for r in matching if _key(r, cols) > _key(decode_token(token), cols)] if token else matching
    chunk = after[:limit]
    more = len(after) > limit
    counts: dict[str, int] = {}
    for r in matching:
        counts[r.get("label") or ""] = counts.get(r.get("label") or "", 0) + 1
    return {
        "instances": chunk,
        "next_token": encode_token({col: chunk[-1].get(col) for col, _ in cols}) if more else None,
        "total_instances": len(matching),
        "label_counts": counts,
    }
