"""Where dataset files live and how they get there: the default data folder, bounded downloads
through torchvision's helpers, and the one clear error when files are missing and cannot be fetched.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
import zlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

from cnnbench.errors import DataError

ENV_VAR = "CNNBENCH_DATA"
DOWNLOAD_TIMEOUT_S = 20.0  # per socket operation: an offline machine fails fast instead of hanging


def default_data_dir() -> Path:
    """``$CNNBENCH_DATA`` if set, else the per-user cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "cnnbench" / "data"


def resolve_data_dir(data_dir: Path | str | None) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torchvision's urlopen calls pass no timeout; bound them through the process default."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def fetch(fetchers: Sequence[Callable[[], None]], *, what: str, expected: str, how_to: str,
          download: bool) -> None:
    """Run download callables (first success wins); on failure raise one DataError.

    ``expected`` says which files are expected where; ``how_to`` how to get them by hand.
    """
    reasons = []
    if download:
        for attempt in fetchers:
            try:
                with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                    attempt()
                return
            except Exception as err:  # network, HTTP, a truncated archive (tarfile/zipfile errors), ...
                reasons.append(f"{type(err).__name__}: {getattr(err, 'reason', err)}")
    tried = f"download failed ({'; '.join(dict.fromkeys(reasons))})" if reasons else "download is disabled"
    raise DataError(f"{what} not found: expected {expected}; {tried}. {how_to}")


def download_file(url: str, folder: Path, filename: str) -> None:
    """Download one file with torchvision's helper (no md5: re-exports differ byte-wise)."""
    from torchvision.datasets.utils import download_url

    target = folder / filename
    try:
        download_url(url, str(folder), filename, md5=None)
    except BaseException:
        target.unlink(missing_ok=True)  # never leave a partial file that looks complete
        raise


def download_archive(url: str, folder: Path, filename: str) -> None:
    """Download and unpack an archive into ``folder`` with torchvision's helper, then drop it."""
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(url, str(folder), filename=filename, md5=None, remove_finished=True)
    except BaseException:
        (folder / filename).unlink(missing_ok=True)
        raise


def read_bytes(path: Path) -> bytes:
    """Read a file, transparently gunzipping ``*.gz``; a truncated/corrupt file is a DataError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
        raise DataError(f"{path} is truncated or corrupt ({type(err).__name__}: {err}); "
                        f"delete it and download it again") from None
