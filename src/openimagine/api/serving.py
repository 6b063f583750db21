"""How ``openimagine serve`` runs uvicorn: every connection limit in one place.

uvicorn closes a keep-alive connection idle after a response and answers 503
past ``limit_concurrency``. It has no read timeout: a client that connects and
sends nothing, or sends headers or a body a byte at a time, holds its connection
(and one of ``max_connections``) until it goes. Its header size cap applies to
the pure-Python h11 parser only; with httptools installed (the faster parser
uvicorn picks when present) a header section is not capped. A server reachable
from the internet belongs behind a reverse proxy that times out slow clients and
caps headers (docs/deploy.md).

Forwarded headers (``X-Forwarded-For``, ``X-Forwarded-Proto``) set the client
address that the failed-authentication limit counts. uvicorn believes them from
127.0.0.1 by default, so anyone on the host could pick a new address per try;
here they are believed only from the proxies named in
``OPENIMAGINE_FORWARDED_ALLOW_IPS``.
"""

from __future__ import annotations

from typing import Any

from openimagine.settings import Settings

# Seconds an idle keep-alive connection stays open after a response.
KEEP_ALIVE_SECONDS = 5
# A header section larger than this is refused (400) by h11 (not by httptools).
MAX_HEADER_BYTES = 16 * 1024
# Connections the kernel queues before the server accepts them.
BACKLOG = 2048


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` beyond the app."""
    trusted = settings.forwarded_allow_ips.strip()
    return {
        "host": settings.host,
        "port": settings.port,
        # One JSON line per request comes from the app (``api/observe.py``), fast
        # path included; uvicorn's own line would repeat it, without the request id.
        "access_log": False,
        "log_level": "info",
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "limit_concurrency": settings.max_connections,
        "backlog": BACKLOG,
        "proxy_headers": bool(trusted),
        # uvicorn reads None as $FORWARDED_ALLOW_IPS or 127.0.0.1: never None here.
        "forwarded_allow_ips": trusted or [],
    }
