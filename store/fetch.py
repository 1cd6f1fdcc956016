"""Bytes from an fsspec URL to a local file: the only module that talks to a remote backend.

Which backend reads a URL is fsspec's choice (`s3://` s3fs, `gs://` gcsfs,
`az://` adlfs, `https://` aiohttp, `file://`, `memory://` built in); each
takes its credentials from its usual environment (AWS_* and ~/.aws, Google's
application default credentials, AZURE_STORAGE_*). A backend that is not
installed is one error naming the pip extra that installs it.

A fetch that fails is tried `len(RETRY_DELAYS) + 1` times in all, waiting
1, 2, then 4 s in between (at most 7 s of waiting), then raises `FetchError`
naming the URL. A file the server says does not exist is not retried.
fsspec is imported on first use: `clasp --help` and local stores never load it.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

from clasp.errors import RunError
from clasp.store.errors import NotAStoreError, StoreError

log = logging.getLogger("clasp")

RETRY_DELAYS = (1.0, 2.0, 4.0)  # seconds before the 2nd, 3rd and 4th try
HTTP_TIMEOUTS = {"sock_connect": 30, "sock_read": 60}  # seconds; a server that stops answering fails a try
# protocol -> the extra of setup.cfg that installs its fsspec backend
BACKEND_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure",
                  "abfss": "azure", "adl": "azure", "http": "http", "https": "http"}
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_url(location: str | Path) -> bool:
    """Whether a store location is a URL (`scheme://...`) rather than a local path."""
    return isinstance(location, str) and _URL.match(location) is not None


def join_url(url: str, name: str) -> str:
    return f"{url.rstrip('/')}/{name}"


class RemoteStoreError(StoreError):
    """A StoreError about a URL: the message names the URL as written (a Path would fold its `//`)."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(url, problem)
        self.path = url
        self.args = (f"{url}: {problem}",)


class UnusableUrlError(RemoteStoreError, NotAStoreError):
    """The URL cannot be read as a store at all (no backend, nothing there, a cache too small): exit 2."""


class FetchError(RunError):
    """A fetch that still failed after its retries: the server or the network, not the store (exit 1)."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"{url}: {problem}")
        self.url = url
        self.problem = problem


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, its path for `url`); UnusableUrlError when no installed backend reads it."""
    try:
        import fsspec
    except ImportError:
        raise UnusableUrlError(url, "reading a URL needs fsspec: pip install 'clasp[http]' (or s3, gcs, azure)") \
            from None
    protocol = url.split("://", 1)[0].lower()
    options = {}
    if protocol in ("http", "https"):
        options = {"client_kwargs": {"timeout": _http_timeout()}}
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError:
        extra = BACKEND_EXTRAS.get(protocol)
        hint = f"pip install 'clasp[{extra}]'" if extra else "install its fsspec backend"
        raise UnusableUrlError(url, f"no backend for {protocol}:// is installed; {hint}") from None
    except ValueError as exc:
        raise UnusableUrlError(url, f"not a URL fsspec can read ({exc})") from None


def _http_timeout():
    import aiohttp

    return aiohttp.ClientTimeout(total=None, **HTTP_TIMEOUTS)


def fetch(fs: Any, remote: str, url: str, dest: Path) -> None:
    """Copy `remote` (on `fs`) to the local file `dest`, with retries; FetchError naming `url` at the end.

    A missing file raises UnusableUrlError at once (the server answered: it is not there).
    """
    for attempt in range(len(RETRY_DELAYS) + 1):
        try:
            fs.get_file(remote, str(dest))
            return
        except FileNotFoundError:
            raise UnusableUrlError(url, "not found") from None
        except Exception as exc:  # noqa: BLE001 - backends raise their own types for a failed transfer
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            if attempt == len(RETRY_DELAYS):
                raise FetchError(url, f"fetch failed {attempt + 1} times, last: {reason}") from None
            log.warning("%s: fetch failed (%s); trying again in %g s", url, reason, RETRY_DELAYS[attempt])
            time.sleep(RETRY_DELAYS[attempt])
