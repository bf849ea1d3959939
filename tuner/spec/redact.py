"""Credentials out of everything the service prints, logs, stores or returns.

One :class:`Redactor` masks two things wherever they appear in a text:

- any credential inside a URL: the password of ``scheme://user:password@host`` (for ``redis://`` and
  ``rediss://`` a lone ``user@`` too, which some clients read as the password) and the value of a
  secret-looking query parameter (``?token=``, ``access_token``, ``api_key``, ``password``, ...);
- the configured secrets themselves (the passwords of the service's URLs, its API tokens), also where no
  URL frames them, e.g. an error message of a driver that quotes a password.

A configured secret shorter than :data:`MIN_LITERAL` characters is masked only inside URLs: replacing every
occurrence of a short word (``cotune``) would garble logs and still protect nothing a guesser could not
guess. :func:`install_log_redaction` puts a redactor in front of every log record of the process, so no
handler (uvicorn's access log, Celery's, one added later) can write an unmasked line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

MASK = "***"
MIN_LITERAL = 8
SECRET_PARAMS = (
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "private_token",
    "api_key",
    "apikey",
    "key",
    "password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "sig",
    "signature",
    "auth",
)

_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):(?P<secret>[^@/?#\s]*)@")
_REDIS_USER = re.compile(r"(?P<head>\brediss?://)(?P<secret>[^:/?#@\s]+)@", re.IGNORECASE)
_PARAM = re.compile(r"(?P<head>[?&;](?:" + "|".join(SECRET_PARAMS) + r")=)(?P<secret>[^&#\s\"'<>]+)", re.IGNORECASE)


def url_secrets(url: str | None) -> list[str]:
    """The password of a URL (as written and percent-decoded) and its secret query values."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = []
    if parts.password:
        found.append(parts.password)
    elif parts.username and parts.scheme.lower() in ("redis", "rediss"):
        found.append(parts.username)
    found += [m.group("secret") for m in _PARAM.finditer("?" + parts.query)]
    return found + [unquote(s) for s in found if unquote(s) != s]


@dataclass(frozen=True)
class Redactor:
    """Masks URL credentials and the given literal secrets in any text; call it on a string."""

    secrets: tuple[str, ...] = ()

    @classmethod
    def of(cls, urls: Iterable[str | None] = (), tokens: Iterable[str | None] = ()) -> Redactor:
        found = {s for url in urls for s in url_secrets(url)} | {t for t in tokens if t}
        # longest first, so a secret that contains another is masked whole
        return cls(tuple(sorted((s for s in found if len(s) >= MIN_LITERAL), key=len, reverse=True)))

    def __call__(self, text: str) -> str:
        text = _PASSWORD.sub(rf"\g<head>:{MASK}@", text)
        text = _REDIS_USER.sub(rf"\g<head>{MASK}@", text)
        text = _PARAM.sub(rf"\g<head>{MASK}", text)
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def value(self, value: object) -> object:
        """A JSON-like value with every string in it redacted (for response bodies)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


def redact_url(url: str) -> str:
    """A URL fit to print: its password and secret query values masked."""
    return Redactor.of([url])(url)


# -- logging ---------------------------------------------------------------------------------------------

_current: list[Redactor] = []


def install_log_redaction(redactor: Redactor) -> None:
    """Redact every log record this process makes from now on, whichever logger or handler it goes to.

    Done in the record factory rather than in a handler's filter: Celery and uvicorn add their handlers
    after start-up, and a filter on a logger does not see records that propagate to it from its children.
    Installing again replaces the redactor (settings read anew), it does not stack.
    """
    _current[:] = [redactor]
    previous = logging.getLogRecordFactory()
    if getattr(previous, "cotune_redacts", False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _scrub(record, _current[0])
        return record

    factory.cotune_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def _scrub(record: logging.LogRecord, redact: Redactor) -> None:
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    elif record.msg is not None:
        record.msg = redact(str(record.msg))
    if isinstance(record.args, tuple):
        # numbers stay numbers: uvicorn's access formatter does int(status_code) on its args
        record.args = tuple(_arg(a, redact) for a in record.args)
    elif isinstance(record.args, dict):
        record.args = {k: _arg(v, redact) for k, v in record.args.items()}
    if record.exc_info and record.exc_info[0] is not None:
        # rendered now, masked, and the live exception dropped: a formatter would render it unmasked
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        record.exc_info = None
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def _arg(value: object, redact: Redactor) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(value if isinstance(value, str) else str(value))
