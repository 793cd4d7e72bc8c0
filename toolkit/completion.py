"""What happens to a source file after its rows are committed, and to a file given up on.

``delete`` removes it (and its done-file), ``move`` puts it in the archive under a dated folder
(``YYYY/MM/DD``), ``keep`` leaves it (the ledger alone stops it being imported again). A file that
failed too often goes to the quarantine folder with ``NAME.error.json`` beside it.

Every operation is idempotent, because a crash can interrupt it anywhere: deleting a file that is
already gone, or moving one that is already at its destination, counts as done. Destinations are
built from a sanitised name (no ``..``, no control characters), so a hostile remote name such as
``../../x.xml`` or one with a newline never writes outside the configured folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from toolkit.context import context, state_database
from toolkit.ledger import Ledger
from toolkit.sources import Source, _protocols, open_source

__all__ = ["Completer", "redrive", "redrive_schedule_file", "safe_name", "source_key"]

_UNSAFE = re.compile(r"[\x00-\x1f\x7f\\]")


def safe_name(name: str) -> str:
    """Return ``name`` with every path segment made harmless (``..``, empty, control chars)."""
    if "/" not in name and name not in ("", ".", "..") and not _UNSAFE.search(name):
        return name  # the usual case, asked once a file: nothing to change
    parts = []
    for part in name.split("/"):
        part = _UNSAFE.sub("_", part)
        parts.append("_" if part in ("", ".", "..") else part)
    return "/".join(parts)


class Completer:
    """Deletes, archives or quarantines files of one source, on the source's filesystem."""

    def __init__(
        self,
        source: Source,
        mode: str,
        *,
        archive: str | None = None,
        quarantine: str | None = None,
        done_suffix: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.src = source
        self.fs: Any = source.fs
        self.local = source.local  # asked once: it is asked again for every file
        self.mode = mode
        self.archive = self._folder(archive, ".archive")
        self.quarantine_folder = self._folder(quarantine, ".quarantine")
        self.done_suffix = done_suffix
        self.clock = clock

    def _folder(self, given: str | None, default: str) -> str:
        if given is None:
            return self.src.join(default)
        if "://" in given:
            from fsspec.core import split_protocol

            protocol, _ = split_protocol(given)
            if protocol not in _protocols(self.fs):
                raise ValueError(
                    f"folder {given!r} is not on the same filesystem as the source "
                    f"{self.src.url!r}; give a folder there"
                )
            path = self.fs._strip_protocol(given)
            return str(path).rstrip("/")
        if given.startswith("/"):
            return posixpath.normpath(given)
        if self.local:
            return os.path.abspath(given)
        return posixpath.normpath(self.src.join(given))

    # --- filesystem helpers --------------------------------------------------------------

    def _exists(self, path: str) -> bool:
        return os.path.lexists(path) if self.local else bool(self.fs.exists(path))

    def _move(self, path: str, dest: str) -> None:
        if self.local:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(path, dest)
            return
        self.fs.makedirs(posixpath.dirname(dest), exist_ok=True)
        if _AZURE.intersection(_protocols(self.fs)):
            _azure_move(self.fs, path, dest)
        else:
            try:
                self.fs.mv(path, dest)
            except NotImplementedError:
                # no server-side copy or move (Google Drive's plugin): copy through this
                # process, and delete the source only once the copy is whole
                self.fs.pipe_file(dest, self.fs.cat_file(path))
                self.fs.rm_file(path)
        # some filesystems cache listings; make sure the next look sees the move
        with contextlib.suppress(AttributeError):
            self.fs.invalidate_cache()

    def _remove(self, path: str) -> None:
        try:
            if self.local:
                os.remove(path)
            else:
                self.fs.rm_file(path)
        except FileNotFoundError:
            return  # gone already: a crash after the delete, or another run finished it

    def _write(self, path: str, data: bytes) -> None:
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    # --- completion ----------------------------------------------------------------------

    @property
    def bulk_delete(self) -> bool:
        """Return True when deletes go out side by side (remote async filesystems)."""
        from fsspec.asyn import AsyncFileSystem

        return self.mode == "delete" and not self.local and isinstance(self.fs, AsyncFileSystem)

    def delete_many(self, names: list[str]) -> dict[str, BaseException]:
        """Return the errors by name after deleting ``names`` (and done-files) concurrently.

        A file that is already gone counts as deleted, as in `complete`.
        """
        import asyncio

        from fsspec.asyn import sync

        paths = [self.src.join(n) for n in names]
        if self.done_suffix:
            paths += [f"{p}{self.done_suffix}" for p in paths]

        async def gather() -> list[Any]:
            return await asyncio.gather(
                *(self.fs._rm_file(p) for p in paths), return_exceptions=True
            )

        outcomes = sync(self.fs.loop, gather)
        self.fs.invalidate_cache()
        return {
            name: out
            for name, out in zip(names, outcomes, strict=False)
            if isinstance(out, BaseException) and not isinstance(out, FileNotFoundError)
        }

    def destination(self, name: str) -> str | None:
        """Return where ``move`` will put ``name`` (None for delete and keep)."""
        if self.mode != "move":
            return None
        day = self.clock().strftime("%Y/%m/%d")
        dest = f"{self.archive}/{day}/{safe_name(name)}"
        if self._exists(dest):  # the partner sent the same name twice today
            stamp = self.clock().strftime("%H%M%S%f")
            base, ext = posixpath.splitext(dest)
            dest = f"{base}.{stamp}{ext}"
        return dest

    def complete(self, name: str, dest: str | None) -> None:
        """Return nothing once ``name`` is deleted, moved to ``dest`` or kept."""
        path = self.src.join(name)
        if self.mode == "delete":
            self._remove(path)
        elif self.mode == "move":
            if dest is None:
                raise ValueError(f"{name}: no archive destination recorded")
            if self._exists(path):
                self._move(path, dest)
            elif not self._exists(dest):
                raise FileNotFoundError(f"{name} is neither at the source nor at {dest}")
        if self.done_suffix and self.mode != "keep":
            self._remove(f"{path}{self.done_suffix}")

    def quarantine(self, key: tuple[str, int, str], error: str, attempts: int, run_id: str) -> str:
        """Return where the file now sits in quarantine, with its ``.error.json`` beside it."""
        name = key[0]
        path = self.src.join(name)
        plain = f"{self.quarantine_folder}/{safe_name(name)}"
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:8]
        base, ext = posixpath.splitext(plain)
        hashed = f"{base}.{digest}{ext}"
        if self._exists(path):
            dest = hashed if self._exists(plain) else plain
            self._move(path, dest)
        else:
            dest = hashed if self._exists(hashed) else plain
        try:
            details: Any = json.loads(error)
        except ValueError:
            details = {"error": error}
        sidecar = {
            "version": 1,
            "file": name,
            "source": self.src.url,
            "size": key[1],
            "stamp": key[2],
            "error": details.get("error"),
            "traceback": details.get("traceback", []),
            "run_id": run_id,
            "attempts": attempts,
            "quarantined_at": self.clock().isoformat(timespec="seconds"),
            "redrive": f"nbcron redrive <schedule> {name!r} (or toolkit.redrive(source, name))",
        }
        self._write(f"{dest}.error.json", json.dumps(sidecar, indent=2).encode())
        if self.done_suffix:
            self._remove(f"{path}{self.done_suffix}")
        return dest

    def unquarantine(self, name: str) -> str:
        """Return the source path ``name`` was moved back to from quarantine (re-drive)."""
        safe = safe_name(name)
        dest = self.src.join(safe)
        held = f"{self.quarantine_folder}/{safe}"
        if not self._exists(held):
            raise FileNotFoundError(f"{name!r} is not in quarantine at {held}{self._held_now()}")
        self._move(held, dest)
        self._remove(f"{held}.error.json")
        return dest

    def _held_now(self) -> str:
        """Return what the quarantine holds, as the tail of a message (at most 10 names)."""
        try:
            paths = self.fs.glob(f"{self.quarantine_folder}/*.error.json")
        except Exception:  # the message is still right without the list
            return ""
        names = sorted(posixpath.basename(p).removesuffix(".error.json") for p in paths)
        if not names:
            return "; the quarantine is empty"
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        return f"; it holds: {', '.join(names[:10])}{more}"


_AZURE = frozenset({"az", "abfs", "abfss"})


def _azure_move(fs: Any, path: str, dest: str, *, timeout: float = 600.0) -> None:
    """Return once blob ``path`` is copied to ``dest`` server-side, and only then deleted.

    adlfs's ``mv`` deletes the source as soon as the copy has *started*; Azure may run a copy
    asynchronously (``pending``), and deleting its source then fails the copy: the file is lost.
    """
    import time

    from fsspec.asyn import sync

    fs.cp_file(path, dest)
    container, blob, _ = fs.split_path(dest)

    async def copy_status() -> str | None:
        async with fs.service_client.get_blob_client(container, blob) as client:
            props = await client.get_blob_properties()
        return props.copy.status  # type: ignore[no-any-return]

    deadline = time.monotonic() + timeout
    while (status := sync(fs.loop, copy_status)) == "pending":
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the Azure copy of {path} to {dest} is still pending; the source is kept"
            )
        time.sleep(1.0)
    if status not in (None, "success"):
        raise OSError(f"the Azure copy of {path} to {dest} ended {status!r}; the source is kept")
    fs.rm_file(path)


def source_key(url: str) -> str:
    """Return the name the ledger knows a source by (local paths made absolute)."""
    return url.rstrip("/") if "://" in url else f"file://{os.path.abspath(url)}"


def redrive(
    source: str,
    name: str,
    *,
    quarantine: str | None = None,
    state: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Return the path a quarantined file was put back to, so the next run imports it afresh.

    ``name`` is the file's name as it was in the source (or its sanitised quarantine name); its
    ledger entries are forgotten first, then the file is moved back and its sidecar removed.
    """
    src = open_source(source, storage_options)
    done = Completer(src, "keep", quarantine=quarantine)
    ledger = Ledger(state or state_database(), source_key(source), run_id=context().run_id)
    held = [e for e in ledger.entries("quarantined") if name in (e.name, safe_name(e.name))]
    ledger.forget(held)
    return done.unquarantine(held[0].name if held else name)


def redrive_schedule_file(
    project: str | os.PathLike[str], parameters: Mapping[str, Any], name: str, *, database: str
) -> str:
    """Return where a quarantined file went back to, for ``nbcron redrive SCHEDULE NAME``.

    ``parameters`` are the schedule's (``source``, optional ``quarantine`` and
    ``storage_options``); relative local folders resolve against ``project`` as in a run.
    """
    source = parameters.get("source")
    if not isinstance(source, str) or not source:
        raise ValueError("the schedule has no `source` parameter; re-drive needs the inbox URL")
    folder = parameters.get("quarantine")

    def resolve(path: str) -> str:
        return path if "://" in path or os.path.isabs(path) else os.path.join(project, path)

    return redrive(
        resolve(source),
        name,
        quarantine=resolve(folder) if isinstance(folder, str) and folder else None,
        state=database,
        storage_options=parameters.get("storage_options") or None,
    )
