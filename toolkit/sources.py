"""The ready files in a folder on any fsspec URL: ``toolkit.list_files``.

A source is a local path, ``file://``, ``sftp://``, ``s3://``, ``memory://`` or any other fsspec
URL. Storage options are passed through; a value written ``"secret:NAME"`` is replaced by
``toolkit.secret("NAME")``, so a password never sits in a schedule or a notebook.

A file is *ready* when

* its name is not excluded (dotfiles and the temporary names partners write to:
  ``*.tmp *.part *.partial *.filepart *.writing *.inprogress``),
* it is at least ``min_age`` old **by the source's clock** (the modification time of a probe file
  written to the source, so a server whose clock is ahead or behind ours is still judged right),
* with ``stable=S``, its size and time did not change over ``S`` seconds,
* with ``done_suffix=".done"``, ``NAME.done`` is present,
* it is not empty (unless ``allow_empty``).

Files that are not ready are listed in ``Listing.skipped`` with the reason, and left alone.
"""

from __future__ import annotations

import fnmatch
import io
import os
import posixpath
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import IO, Any, Literal

from toolkit.context import secret
from toolkit.errors import NbcronError

__all__ = [
    "DEFAULT_EXCLUDES",
    "Listing",
    "ReadyFile",
    "Skipped",
    "SourceError",
    "list_files",
    "open_source",
    "prefetch",
]

DEFAULT_EXCLUDES = (".*", "*.tmp", "*.part", "*.partial", "*.filepart", "*.writing", "*.inprogress")
Order = Literal["oldest", "newest", "name"]


class SourceError(NbcronError):
    """A source that cannot be opened or listed; names the URL and what to check."""


@dataclass(frozen=True)
class Source:
    """An opened source: its filesystem and the root folder's path on it."""

    url: str
    fs: Any = field(repr=False, compare=False)
    root: str

    def join(self, name: str) -> str:
        """Return the filesystem path of ``name`` relative to the root."""
        return f"{self.root.rstrip('/')}/{name}" if self.root else name

    @property
    def local(self) -> bool:
        return "file" in _protocols(self.fs)


SMALL_FILE = 65536  # bytes; a local file listed this small is read whole when opened


def _open_small(path: str) -> IO[bytes]:
    """Return a small local file's content as an in-memory stream, read in as few system calls
    as can be (the local hot path: a buffered file object costs twice the reading of a small
    file). A file that has grown past `SMALL_FILE` since it was listed comes back as the open
    file itself, so a large file is still streamed.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        parts: list[bytes] = []
        size = 0
        while size <= SMALL_FILE and (part := os.read(fd, SMALL_FILE + 1 - size)):
            parts.append(part)
            size += len(part)
        if size > SMALL_FILE:
            os.lseek(fd, 0, os.SEEK_SET)
            return os.fdopen(fd, "rb")  # the file object owns (and closes) the descriptor
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return io.BytesIO(b"".join(parts))


@dataclass(frozen=True)
class ReadyFile:
    """A file that is ready to be processed."""

    source: str
    name: str  # path relative to the source folder, with "/" separators
    path: str  # the path on the filesystem
    size: int
    mtime: datetime | None
    etag: str | None = None
    done_path: str | None = None
    fs: Any = field(default=None, repr=False, compare=False)
    data: bytes | None = field(default=None, repr=False, compare=False)  # fetched ahead

    @cached_property
    def stamp(self) -> str:
        """Return what tells two versions of the file apart besides its size: etag or mtime."""
        if self.etag:
            return f"etag:{self.etag}"
        return self.mtime.isoformat() if self.mtime else ""

    @cached_property
    def local(self) -> bool:
        """Return True if the file is on the local filesystem (read without fsspec)."""
        return self.fs is None or "file" in _protocols(self.fs)

    def open(self) -> IO[bytes]:
        """Return the file opened for binary reading (close it, or use ``with``)."""
        if self.data is not None:
            return io.BytesIO(self.data)
        if self.local:
            if self.size <= SMALL_FILE:
                return _open_small(self.path)
            return open(self.path, "rb")  # no fsspec wrapper per file
        return self.fs.open(self.path, "rb")  # type: ignore[no-any-return]

    def read(self) -> bytes:
        """Return the file's content."""
        with self.open() as fh:
            return fh.read()


@dataclass(frozen=True)
class Skipped:
    """A file left alone this time, and why."""

    name: str
    size: int
    reason: str


class Listing(list[ReadyFile]):
    """The ready files, oldest first by default; ``skipped`` holds the others with reasons."""

    def __init__(self, files: Iterable[ReadyFile] = (), skipped: Iterable[Skipped] = ()) -> None:
        super().__init__(files)
        self.skipped = list(skipped)
        self.capped = 0  # ready files left for the next run by ``limit``

    def _repr_html_(self) -> str:
        """Return the ready and the skipped files as escaped HTML tables (Jupyter's display)."""
        import pandas as pd

        from toolkit.htmlrepr import frame_html

        ready = pd.DataFrame(
            [{"file": f.name, "bytes": f.size, "modified": f.mtime} for f in self],
            columns=["file", "bytes", "modified"],
        )
        html = f"<p>{len(self):,} ready file(s), {len(self.skipped):,} not ready</p>"
        html += frame_html(ready, css="nbcron-ready-files")
        if self.capped:
            html += f"<p>{self.capped:,} more ready file(s) left for the next run by limit</p>"
        if self.skipped:
            skipped = pd.DataFrame(
                [{"file": s.name, "bytes": s.size, "why not ready": s.reason} for s in self.skipped]
            )
            html += frame_html(skipped, css="nbcron-skipped-files")
        return html


def _protocols(fs: Any) -> tuple[str, ...]:
    proto = getattr(fs, "protocol", ())
    return (proto,) if isinstance(proto, str) else tuple(proto)


def resolve_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return storage options with every ``"secret:NAME"`` value replaced by the secret."""
    out: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if isinstance(value, str) and value.startswith("secret:"):
            value = secret(value.removeprefix("secret:"))
        elif isinstance(value, Mapping):
            value = resolve_options(value)
        out[key] = value
    return out


def open_source(url: str, storage_options: Mapping[str, Any] | None = None) -> Source:
    """Return the source for ``url``: its fsspec filesystem and root folder."""
    from fsspec.core import url_to_fs

    text = str(url)
    if "://" not in text:
        text = os.path.abspath(text)
    try:
        fs, root = url_to_fs(text, **resolve_options(storage_options))
    except (ValueError, ImportError, OSError) as exc:
        raise SourceError(
            f"source {url!r} cannot be opened ({type(exc).__name__}: {exc}); check the URL and "
            "storage options (credentials as 'secret:NAME')"
        ) from exc
    return Source(url=str(url), fs=fs, root=str(root).rstrip("/") or str(root))


def _mtime(info: Mapping[str, Any]) -> datetime | None:
    # sshfs/local, s3fs, adlfs, generic, Dropbox (server clock), Google Drive, then creation
    for key in (
        "mtime",
        "LastModified",
        "last_modified",
        "modified",
        "server_modified",
        "modifiedTime",
        "created",
    ):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, int | float):
            return datetime.fromtimestamp(float(value), UTC)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _etag(info: Mapping[str, Any]) -> str | None:
    value = info.get("ETag") or info.get("etag")
    return str(value).strip('"') if value else None


def _scan(source: Source, pattern: str, recursive: bool) -> dict[str, dict[str, Any]]:
    """Return ``{relative name: info}`` of the files under the root matching ``pattern``."""
    fs, root = source.fs, source.root
    try:
        if source.local and not recursive:
            return _scan_local(root, pattern)
        # A listing cached from an earlier look (adlfs and s3fs keep them for the life of the
        # filesystem object) would give a file the partner replaced its old size when opened.
        fs.invalidate_cache()
        found = fs.find(root, maxdepth=None if recursive else 1, detail=True)
    except FileNotFoundError as exc:
        raise SourceError(
            f"source {source.url!r}: the folder does not exist; create it or fix `source`"
        ) from exc
    except (OSError, PermissionError) as exc:
        raise SourceError(f"source {source.url!r} cannot be listed: {exc}") from exc
    out: dict[str, dict[str, Any]] = {}
    prefix = root.rstrip("/") + "/"
    for path, info in found.items():
        if info.get("type", "file") != "file":
            continue
        rel = path[len(prefix) :] if path.startswith(prefix) else posixpath.basename(path)
        if not recursive and "/" in rel:
            continue  # adlfs's find ignores maxdepth; an archive under the inbox is not new files
        if fnmatch.fnmatchcase(posixpath.basename(rel), pattern) or fnmatch.fnmatchcase(
            rel, pattern
        ):
            out[rel] = {**info, "name": path}
    return out


def _scan_local(root: str, pattern: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False) and fnmatch.fnmatchcase(entry.name, pattern):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted while we listed (another run completed it): not there
                out[entry.name] = {"name": entry.path, "size": st.st_size, "mtime": st.st_mtime}
    return out


def source_now(source: Source) -> datetime:
    """Return the source's idea of now: the modification time of a probe file written there.

    Falls back to our own clock when the source cannot be written (a read-only share).
    """
    if source.local:
        return datetime.now(UTC)
    probe = source.join(f".nbcron-clock-{uuid.uuid4().hex}")
    try:
        source.fs.pipe_file(probe, b"")
        try:
            info = source.fs.info(probe)
        finally:
            source.fs.rm_file(probe)
        when = _mtime(info)
    except Exception:  # plugins refuse a write in their own terms (adlfs: HttpResponseError)
        when = None
    return when or datetime.now(UTC)


def list_files(
    url: str,
    pattern: str = "*",
    *,
    recursive: bool = False,
    exclude: Iterable[str] = DEFAULT_EXCLUDES,
    min_age: float = 0,
    stable: float = 0,
    done_suffix: str | None = None,
    allow_empty: bool = False,
    order: Order = "oldest",
    limit: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    clock: Callable[[], datetime] | None = None,
    probe_clock: bool = True,
    source: Source | None = None,
) -> Listing:
    """Return the ready files under ``url`` matching ``pattern``, oldest first, at most ``limit``.

    ``min_age`` (seconds) is measured against ``clock()`` if given, else the source's clock;
    ``stable`` (seconds) looks twice and keeps only files whose size and time did not change;
    ``done_suffix`` (e.g. ``".done"``) wants ``NAME.done`` beside each file. ``order`` is
    ``oldest``, ``newest`` or ``name``. Files that are not ready are in ``.skipped``.
    ``probe_clock=False`` (dry runs) judges ``min_age`` by our clock instead of writing a probe.
    """
    src = source or open_source(url, storage_options)
    # one regex for all the exclude globs: a glob match per pattern per file adds up
    excluded = re.compile("|".join(fnmatch.translate(ex) for ex in exclude) or "(?!)").match
    found = _scan(src, pattern, recursive)
    names = set(found)
    if done_suffix:
        names |= set(_scan(src, f"{pattern}{done_suffix}", recursive))
    skipped: list[Skipped] = []
    if stable > 0 and found:
        time.sleep(stable)
        again = _scan(src, pattern, recursive)
    else:
        again = found
    if clock is None:
        clock = (lambda: source_now(src)) if probe_clock else (lambda: datetime.now(UTC))
    now = clock() if min_age > 0 else None
    ready: list[ReadyFile] = []
    for rel, info in found.items():
        base = posixpath.basename(rel)
        size = int(info.get("size") or 0)
        if excluded(base):
            continue
        if done_suffix and base.endswith(done_suffix):
            continue  # a marker, not data
        mtime = _mtime(info)
        reason = None
        if size == 0 and not allow_empty:
            reason = "empty (0 bytes); left in place"
        elif done_suffix and f"{rel}{done_suffix}" not in names:
            reason = f"waiting for {base}{done_suffix}"
        elif now is not None and mtime is not None and (now - mtime).total_seconds() < min_age:
            reason = f"younger than min_age={min_age:g}s by the source's clock"
        elif stable > 0 and (
            rel not in again
            or int(again[rel].get("size") or 0) != size
            or _mtime(again[rel]) != mtime
        ):
            reason = f"still changing over {stable:g}s"
        if reason:
            skipped.append(Skipped(rel, size, reason))
            continue
        ready.append(
            ReadyFile(
                source=src.url,
                name=rel,
                path=str(info["name"]),
                size=size,
                mtime=mtime,
                etag=_etag(info),
                done_path=src.join(f"{rel}{done_suffix}") if done_suffix else None,
                fs=src.fs,
            )
        )
    epoch = datetime.min.replace(tzinfo=UTC)
    if order == "name":
        ready.sort(key=lambda f: f.name)
    else:
        ready.sort(key=lambda f: (f.mtime or epoch, f.name), reverse=order == "newest")
    listing = Listing(ready[:limit] if limit is not None else ready, skipped)
    listing.capped = max(0, len(ready) - len(listing))
    return listing


def prefetch(files: list[ReadyFile], *, max_size: int = 1 << 20) -> list[ReadyFile]:
    """Return ``files`` with the content of the small remote ones fetched ahead, concurrently.

    On SFTP and S3 one ``cat`` of many paths runs the requests side by side instead of one
    round trip after another; local files and files over ``max_size`` are read when used.
    """
    remote = [f for f in files if not f.local and f.size <= max_size]
    if len(remote) < 2:
        return files
    try:
        fetched = remote[0].fs.cat([f.path for f in remote], on_error="return")
    except (OSError, NotImplementedError, ValueError):
        return files  # read one by one instead; errors then belong to the file that has them
    return [
        replace(f, data=fetched[f.path]) if isinstance(fetched.get(f.path), bytes) else f
        for f in files
    ]
