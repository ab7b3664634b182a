"""Credentials in URLs (``https://user:secret@host``) and secret client properties
(``sasl.password``, ``ssl.key.password``, ...) never reach a log line.

Two layers: :func:`split_userinfo` takes the credentials out of a URL before any client
sees it (they travel as basic auth instead), and :class:`RedactingFilter`, installed on
the CLI's log handlers, rewrites ``scheme://user:pass@`` to ``scheme://***@`` in every
record (message, arguments and traceback), whoever logs it: httpx logs each request's
URL at INFO. The filter also masks the value after a secret property's name
(``sasl.password=...``, ``'ssl.key.password': '...'``), should a client configuration
ever be printed; :func:`is_secret_property` says which librdkafka properties are secret
(settings wrap their values in ``Secret``).
"""

from __future__ import annotations

import logging
import re
import sys
from urllib.parse import unquote, urlsplit, urlunsplit

#: ``scheme://userinfo@``: userinfo up to the first ``@`` before any ``/``, ``?`` or ``#``
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/?#@\s]+@")


#: words that make a client property (librdkafka or registry client) secret
_SECRET_WORDS = ("password", "secret", "jaas", "token", "ssl.key.pem", "credentials", "user.info")

#: a secret property's name, a separator (``=``, ``:``, quotes) and its value
_SECRET_VALUE = re.compile(
    r"(?P<name>[A-Za-z0-9_.]*(?:password|secret|jaas\.config|token|user\.info|ssl\.key\.pem))"
    r"(?P<sep>['\"]?\s*[:=]\s*)(?P<q>['\"]?)(?P<value>[^'\"\s,}]+)",
    re.IGNORECASE,
)


def is_secret_property(name: str) -> bool:
    """True for a client property whose value is a credential (``sasl.password``,
    ``ssl.key.password``, ``sasl.oauthbearer.client.secret``, ``sasl.jaas.config``,
    ``ssl.key.pem``, ``basic.auth.user.info``, ``bearer.auth.token``, ...)."""
    low = name.lower().replace("_", ".")
    return any(w in low for w in _SECRET_WORDS)


def redact_urls(text: str) -> str:
    """``text`` with the userinfo of every URL in it, and the value after every secret
    property's name, replaced by ``***``."""
    if "@" in text:
        text = _USERINFO.sub(r"\g<scheme>***@", text)
    if _SECRET_VALUE.search(text):
        text = _SECRET_VALUE.sub(r"\g<name>\g<sep>\g<q>***", text)
    return text


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``(url without userinfo, (user, password) or None)``; percent-escapes decoded."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, (unquote(user), unquote(password))


class RedactingFilter(logging.Filter):
    """Rewrites credentials in URLs out of a record (install it on handlers: a filter
    on a logger does not see records its children propagate)."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format: leave it to the handler to report
            return True
        clean = redact_urls(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_urls(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_urls(record.stack_info)
        return True


def install(handlers: list[logging.Handler] | None = None) -> None:
    """Put a :class:`RedactingFilter` on ``handlers`` (default: the root logger's)."""
    for h in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())


def setup_logging(*, verbose: bool = False) -> None:
    """Log to stderr, with credentials in URLs redacted from every record whoever logs
    it (httpx logs each registry request's URL at INFO): the CLI's logging, and that of
    a stage it runs in a child process."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    install()
