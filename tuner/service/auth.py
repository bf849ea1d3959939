"""Who may call the API: bearer tokens for writes and reads, and no token in a URL.

- Writes (POST, DELETE) need ``COTUNE_API_TOKEN``; without one configured the API takes no writes.
- Reads (GET of jobs, best configs, exports) need that token or ``COTUNE_API_READ_TOKEN``, unless the
  operator started the API with ``--public-reads``.
- A token in the query string (``?token=``, ``access_token``, ``api_key``, ...) is refused with a hint:
  URLs end up in access logs, proxies and browser histories. The log line of such a request shows the
  value masked (:mod:`cotune.tuner.spec.redact`).

Tokens are compared in constant time. 401 means "no valid token", 403 "this token may not do that".
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable

from cotune.tuner.errors import CotuneError
from cotune.tuner.spec.redact import SECRET_PARAMS
from cotune.tuner.spec.settings import MIN_TOKEN_CHARS, ServiceSettings
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_BEARER = {"WWW-Authenticate": "Bearer"}


class Access(enum.Enum):
    READ = "read"
    WRITE = "write"


class InsecureSettings(CotuneError):
    """The API would start with no token, or one too short to resist guessing."""


def check_tokens(settings: ServiceSettings, insecure_dev: bool) -> None:
    """Refuse, in one line, to serve with weak tokens unless the operator said ``--insecure-dev``."""
    problems = settings.token_problems()
    if problems and not insecure_dev:
        raise InsecureSettings(
            f"refusing to start the API: {'; '.join(problems)}. Set a token of at least {MIN_TOKEN_CHARS} "
            "characters (python -c 'import secrets; print(secrets.token_urlsafe(32))'), "
            "or pass --insecure-dev for a trial on localhost"
        )


def guard(settings: ServiceSettings, access: Access) -> Callable[..., None]:
    """A FastAPI dependency that lets a request through only with the token ``access`` needs."""
    bearer = HTTPBearer(auto_error=False)
    write = (settings.api_token or "").encode()
    read = (settings.api_read_token or "").encode()

    def check(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        named = [k for k in request.query_params if k.lower() in SECRET_PARAMS]
        if named:
            raise HTTPException(
                401,
                f"a token goes in the Authorization header ('Authorization: Bearer <token>'), never in the URL "
                f"(query parameter {named[0]!r}): URLs end up in logs",
                headers=_BEARER,
            )
        given = creds.credentials.encode() if creds is not None else b""
        is_write = bool(write) and secrets.compare_digest(given, write)
        is_read = bool(read) and secrets.compare_digest(given, read)
        if access is Access.READ:
            if settings.public_reads or is_write or is_read:
                return
            raise HTTPException(401, "a valid bearer token is required to read", headers=_BEARER)
        if not write:
            raise HTTPException(403, "this API accepts no writes: COTUNE_API_TOKEN is not set on the server")
        if is_read:
            raise HTTPException(403, "this token may only read; writes need the API's write token")
        if not is_write:
            raise HTTPException(401, "a valid bearer token is required", headers=_BEARER)

    return check
