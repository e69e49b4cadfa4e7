"""Dataset roots that are fsspec URLs (s3://, gs://, https://, file://, ...) as well as local paths.

Everything that reads or writes a shard folder somewhere other than the local disk goes through here, so
the rest of the code keeps its `Path` logic and asks one question: `is_url(root)`.

    fs, path = filesystem("s3://bucket/shards/synth-ucf")      # an fsspec filesystem and its own path
    data = read_bytes(join(root, "manifest.json"))              # retried on transient errors
    chunk = read_range(url, start, end)                         # one ranged GET (HTTP Range, S3 GetObject Range)

Credentials and endpoints come from the usual places of each backend (for S3: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL / FSSPEC_S3_ENDPOINT_URL for an
S3-compatible server), never from a recipe. Backends are optional extras: `pip install -e ".[cloud]"`
brings s3fs (and aiohttp for http/https); gcsfs for gs:// is installed by hand where needed.

Nothing here imports torch: `shards/` stays torch-free.
"""
from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import socket
import time
import urllib.parse
import urllib.request
from pathlib import Path

from shards.errors import LayoutError
from shards.safefiles import create_new

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

# Backends and the package that provides each (for the one-line error when it is missing).
BACKEND_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp",
                    "https": "aiohttp", "az": "adlfs", "abfs": "adlfs"}


class StorageError(OSError):
    """A remote read or write that failed for good (after retries), or a backend that is not installed."""


def is_url(location: object) -> bool:
    """True for 'scheme://...' strings (file:// included); False for plain paths and Path objects."""
    return isinstance(location, str) and bool(_URL.match(location))


def scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


def local_path(location: str | Path) -> Path | None:
    """The local path of a plain path or a file:// URL; None for any other URL."""
    if not is_url(location):
        return Path(location)
    if scheme(str(location)) == "file":
        return Path(str(location)[len("file://"):])
    return None


def join(root: str | Path, *names: str) -> str | Path:
    """root / name for a path, 'root/name' for a URL (no normalisation of the URL's own part)."""
    if not is_url(root):
        return Path(root).joinpath(*names)
    return "/".join([str(root).rstrip("/"), *names])


def basename(location: str | Path) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for a URL; a missing backend is one line naming the extra, and a
    server that refuses connections (or a host that does not resolve) one line naming it, at once."""
    import fsspec
    try:
        fs, inner = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as error:
        package = BACKEND_PACKAGES.get(scheme(url), "the fsspec backend")
        raise StorageError(f"{url}: cannot open {scheme(url)}:// ({error}); fix: pip install -e \".[cloud]\" "
                           f"(or `pip install {package}`)") from None
    check_reachable(url, fs)
    return fs, inner


# ------------------------------------------------------------------------------------------- reachability

PROBE_TIMEOUT_S = 5.0
_REACHED: set[tuple[str, int]] = set()  # servers that accepted a connection in this process (checked once)


def endpoint_of(url: str, fs=None) -> str | None:
    """The http(s) address requests for `url` go to, where it is known here: the URL itself for http(s), the
    configured endpoint of an S3-compatible store; None otherwise (AWS itself, gs://, ...)."""
    kind = scheme(url)
    if kind in ("http", "https"):
        return url
    if kind in ("s3", "s3a"):
        return (getattr(fs, "endpoint_url", None) or (getattr(fs, "client_kwargs", None) or {}).get("endpoint_url")
                or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                or os.environ.get("FSSPEC_S3_ENDPOINT_URL"))
    return None


def check_reachable(url: str, fs=None) -> None:
    """One TCP connection to the server behind `url`, once per process: a refused connection or an unknown
    host is a StorageError naming both, instead of a backend's retries (botocore and s3fs retry a refused
    connection for ~40 s) or fsspec's http "not found". A timeout decides nothing (the request's own retries
    do); nor is a server behind a proxy probed."""
    endpoint = endpoint_of(url, fs)
    if not endpoint:
        return
    parts = urllib.parse.urlsplit(endpoint)
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return
    if not host or (host, port) in _REACHED or (
            parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host)):
        return
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except (ConnectionRefusedError, socket.gaierror) as error:
        via = f" (the endpoint {endpoint} from AWS_ENDPOINT_URL or the fsspec options)" if endpoint != url else ""
        raise StorageError(f"{url}: unreachable: cannot connect to {host}:{port}{via}: {error.strerror or error}; "
                           f"fix: check the address and that the server is running") from None
    except OSError:
        return
    _REACHED.add((host, port))


def is_refused(error: BaseException) -> bool:
    """A refused connection, also when a backend wraps it (aiohttp's os_error, botocore's kwargs['error'],
    a __cause__): nothing listens there, and asking again will not change that."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, ConnectionRefusedError) or getattr(error, "errno", None) == errno.ECONNREFUSED:
            return True
        if "connection refused" in str(error).lower() or "connect call failed" in str(error).lower():
            return True
        error = (getattr(error, "os_error", None) or (getattr(error, "kwargs", None) or {}).get("error")
                 or error.__cause__ or error.__context__)
        seen += 1
    return False


# ------------------------------------------------------------------------------------------- retries

def is_transient(error: BaseException) -> bool:
    """Worth retrying: timeouts, dropped connections, throttling and 5xx answers; not a missing file, a
    refused permission or a malformed request, which would fail the same way again."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if is_refused(error):
        return False
    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    status = getattr(error, "status", None) or getattr(error, "code", None)
    if isinstance(status, int):
        return status >= 500 or status in (408, 429)
    text = f"{type(error).__name__} {error}".lower()
    if any(word in text for word in ("timeout", "timed out", "connection", "temporar", "throttl", "slow down",
                                     "slowdown", "reset by peer", "broken pipe", "internalerror",
                                     "serviceunavailable", "server disconnected",
                                     "payload")):
        return True
    return isinstance(error, OSError) and not isinstance(error, StorageError) and error.errno is None


class Retry:
    """Exponential backoff with jitter: attempt k (1-based) waits base * 2**(k-1) * U(0.5, 1.5), capped."""

    def __init__(self, attempts: int = 5, base_delay: float = 0.2, max_delay: float = 5.0, sleep=time.sleep):
        self.attempts, self.base_delay, self.max_delay, self.sleep = max(1, attempts), base_delay, max_delay, sleep
        self.retries = 0  # transient failures retried so far (for reports and tests)

    def __call__(self, what: str, function, *args, **kwargs):
        for attempt in range(1, self.attempts + 1):
            try:
                return function(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - classified below
                if not is_transient(error):
                    raise
                if attempt == self.attempts:
                    raise StorageError(f"{what}: failed {self.attempts} times, last with {type(error).__name__}: "
                                       f"{error}") from error
                self.retries += 1
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
                self.sleep(delay)
        raise AssertionError("unreachable")


DEFAULT_RETRY = Retry()


# ------------------------------------------------------------------------------------------- reads

def exists(location: str | Path, retry: Retry = DEFAULT_RETRY) -> bool:
    path = local_path(location)
    if path is not None:
        return path.exists()
    fs, inner = filesystem(str(location))
    return bool(retry(f"{location}: exists", fs.exists, inner))


def is_file(location: str | Path, retry: Retry = DEFAULT_RETRY) -> bool:
    path = local_path(location)
    if path is not None:
        return path.is_file()
    fs, inner = filesystem(str(location))
    try:
        return retry(f"{location}: info", fs.info, inner).get("type") == "file"
    except FileNotFoundError as error:
        cause = error.__cause__  # fsspec's http turns every failure into FileNotFoundError: keep real ones apart
        if cause is not None and not isinstance(cause, FileNotFoundError) and "404" not in str(cause) \
                and "not found" not in str(cause).lower():
            raise StorageError(f"{location}: unreachable: {type(cause).__name__}: {cause}") from None
        return False


def size(location: str | Path, retry: Retry = DEFAULT_RETRY) -> int:
    path = local_path(location)
    if path is not None:
        return path.stat().st_size
    fs, inner = filesystem(str(location))
    return int(retry(f"{location}: size", fs.size, inner))


def read_bytes(location: str | Path, retry: Retry = DEFAULT_RETRY) -> bytes:
    """A whole (small) file: an index, a manifest, a config."""
    path = local_path(location)
    if path is not None:
        return path.read_bytes()
    fs, inner = filesystem(str(location))
    return retry(f"{location}: read", fs.cat_file, inner)


def read_range(location: str | Path, start: int, end: int, retry: Retry = DEFAULT_RETRY) -> bytes:
    """Bytes [start, end) with one ranged request (or one seek and read on a local disk)."""
    path = local_path(location)
    if path is not None:
        with open(path, "rb") as handle:
            handle.seek(start)
            return handle.read(end - start)
    fs, inner = filesystem(str(location))
    data = retry(f"{location}: bytes {start}-{end - 1}", fs.cat_file, inner, start=start, end=end)
    if len(data) != end - start:
        raise StorageError(f"{location}: asked for bytes {start}-{end - 1}, got {len(data)} bytes; the file is "
                           f"shorter than its index says (truncated or replaced)")
    return data


def get_file(location: str | Path, local: Path, retry: Retry = DEFAULT_RETRY) -> Path:
    """Download (or copy) one file to `local`, atomically."""
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    temporary = local.with_name(local.name + f".part{os.getpid()}")
    path = local_path(location)
    data = path.read_bytes() if path is not None else b""
    with _new_file(temporary) as handle:  # claims the name: a link planted there is refused, not followed
        handle.write(data)
    if path is None:
        fs, inner = filesystem(str(location))
        try:
            retry(f"{location}: download", fs.get_file, inner, str(temporary))
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    os.replace(temporary, local)
    return local


def _new_file(path: Path):
    """shards.safefiles.create_new, failing as this module does (StorageError) when a link stands there."""
    try:
        return create_new(path)
    except LayoutError as error:
        raise StorageError(str(error)) from None


def put_file(local: Path, location: str | Path, retry: Retry = DEFAULT_RETRY, progress=None) -> None:
    """Upload (or copy) one local file to `location`; object stores make it visible only when complete.
    `progress(n)` is told every n bytes sent (negative when a retried attempt starts over)."""
    path = local_path(location)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        with _new_file(temporary) as handle:
            handle.write(Path(local).read_bytes())
        os.replace(temporary, path)
        if progress is not None:
            progress(path.stat().st_size)
        return
    fs, inner = filesystem(str(location))
    if progress is None:
        retry(f"{location}: upload", fs.put_file, str(local), inner)
        return
    from fsspec.callbacks import Callback

    class Sent(Callback):
        def __init__(self):
            super().__init__()
            self.sent = 0

        def relative_update(self, inc=1):
            self.sent += inc
            progress(inc)

    def attempt():
        callback = Sent()
        try:
            fs.put_file(str(local), inner, callback=callback)
        except BaseException:
            progress(-callback.sent)  # a retry sends the file again
            raise
        if callback.sent == 0:  # a backend that reports nothing: the whole file at the end
            progress(Path(local).stat().st_size)

    retry(f"{location}: upload", attempt)


def list_names(location: str | Path, retry: Retry = DEFAULT_RETRY) -> dict[str, int]:
    """{name: size} of the files directly under a folder or prefix (empty when there is none)."""
    path = local_path(location)
    if path is not None:
        return {p.name: p.stat().st_size for p in path.iterdir() if p.is_file()} if path.is_dir() else {}
    fs, inner = filesystem(str(location))
    try:
        entries = retry(f"{location}: list", fs.ls, inner, detail=True)
    except FileNotFoundError:
        return {}
    return {basename(e["name"]): int(e.get("size") or 0) for e in entries if e.get("type") == "file"}


def cache_folder(url: str, kind: str, root: str | Path | None = None) -> Path:
    """A local folder for copies of what lives at `url`:
    <root, else $VJEPA_CACHE, else ~/.cache/vjepa-engine>/<kind>/<name>-<hash of the URL>."""
    base = Path(root or os.environ.get("VJEPA_CACHE") or Path.home() / ".cache" / "vjepa-engine").expanduser()
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return base / kind / f"{basename(url) or 'root'}-{digest}"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a local file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
