"""Settings dataclasses from environment variables: one parser for `DEPLOY_*` (control plane) and `CSM_*` (runtime).

A field `max_streams: int` is set by `<PREFIX>MAX_STREAMS`. Values parse to the field's declared type (bool accepts
1/0, true/false, yes/no, on/off); `None`/`null`/empty clears an optional field. A variable with the prefix that names
no field is an error, never silently dropped: a typo must not leave a setting at its default.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from typing import Any

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


class ConfigError(ValueError):
    """A value that cannot be parsed, or a variable that names no setting; the message names it."""


def field_types(cls: type) -> dict[str, str]:
    """Field name -> its annotation as text (`from __future__ import annotations` keeps them as strings)."""
    return {f.name: str(f.type) for f in dataclasses.fields(cls)}


def coerce(kind: str, raw: Any, what: str) -> Any:
    """Parse `raw` as the annotation `kind` (`int`, `float | None`, `bool`, `str`, ...); `what` names it in errors."""
    optional = "None" in kind
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("none", "null", "") and optional):
        if optional:
            return None
        raise ConfigError(f"{what}: a value is required")
    base = kind.split("|")[0].strip()
    try:
        if base == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in TRUE:
                return True
            if text in FALSE:
                return False
            raise ValueError(raw)
        if base == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if base == "float":
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if base.startswith("tuple"):
            if isinstance(raw, (list, tuple)):
                return tuple(raw)
            return tuple(p.strip() for p in str(raw).split(",") if p.strip())
        if isinstance(raw, (dict, list)):
            raise ValueError(raw)
        return str(raw)
    except (TypeError, ValueError):
        expected = {"bool": "true or false", "int": "an integer", "float": "a number"}.get(base, base)
        raise ConfigError(f"{what}={raw!r} is not {expected}") from None


def from_env(cls: type, prefix: str, environ: Mapping[str, str], *, also_known: Iterable[str] = ()) -> dict[str, Any]:
    """The fields `environ` sets for dataclass `cls`, parsed; unknown `<prefix>*` variables raise ConfigError.

    `also_known`: whole variable names with the prefix that are read elsewhere (e.g. `DEPLOY_DEBUG`)."""
    types = field_types(cls)
    allowed = set(also_known)
    values: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(prefix) or key in allowed:
            continue
        name = key[len(prefix) :].lower()
        if name not in types:
            known = [prefix + n.upper() for n in types] + sorted(allowed)
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else f" (`--show-config` lists the {prefix}* settings)"
            raise ConfigError(f"unknown setting {key}{hint}")
        values[name] = coerce(types[name], raw, key)
    return values


def from_mapping(cls: type, values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The same checks for a mapping of field names (a YAML file, command-line values): unknown names raise."""
    types = field_types(cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}")
    return {k: coerce(types[k], v, f"{source}: {k}") for k, v in values.items()}
