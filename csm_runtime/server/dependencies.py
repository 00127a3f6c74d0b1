"""Request dependencies: the bearer-token check and accessors for what lifespan put on `app.state`."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from csm_runtime.server.errors import APIError


def read_token(token_file: str | None) -> str | None:
    """The token is the file's content, stripped; an empty or unreadable file is an error, never 'no auth'."""
    if not token_file:
        return None
    try:
        token = Path(token_file).read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read token file {token_file}: {exc.strerror}") from None
    if not token:
        raise ValueError(f"token file {token_file} is empty")
    return token


# Declares the scheme in the OpenAPI document; the check itself is below (auto_error off: our 401, our message).
bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearer", description="The server's token (--token-file).")


def bearer_error(header: str, expected: str | None) -> APIError | None:
    """The 401 for an `Authorization` header value, or None when it carries the token (or the server has none).
    Constant-time compare so timing leaks nothing."""
    if expected is None:
        return None
    scheme, _, given = header.partition(" ")
    challenge = {"WWW-Authenticate": "Bearer"}
    if scheme.lower() != "bearer" or not given:
        return APIError(
            401, "missing bearer token: send `Authorization: Bearer <token>`", code="missing_token", headers=challenge
        )
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        return APIError(401, "invalid bearer token", code="invalid_token", headers=challenge)
    return None


async def require_bearer(
    request: Request, _declared: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)] = None
) -> None:
    """401 unless `Authorization: Bearer <token>` matches. The gate (gate.py) already refused such requests before
    their body was read; this keeps every protected route safe on its own and declares the scheme."""
    err = bearer_error(request.headers.get("authorization", ""), request.app.state.token)
    if err is not None:
        raise err
