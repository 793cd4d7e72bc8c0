"""The file-import loop: ``toolkit.import_files`` lists, claims, parses, writes, completes.

One call does a whole run of a file integration::

    result = toolkit.import_files(source, "*.xml", read=read_order, write=save_orders)

1. Entries earlier runs left half done are finished first: a ``processed`` file (its rows are
   committed) is deleted or moved without being read again; a file at ``max_attempts`` is
   quarantined.
2. The ready files (`toolkit.sources.list_files`) are claimed in batches in the ledger
   (`toolkit.ledger`), read one by one (``read(file)``; an error counts an attempt for that file
   only), and written per batch (``write(batch)``, which must commit before it returns; a batch
   that fails is written again file by file, so one bad file does not hold up the others).
3. Only then is each file marked ``processed``, completed (``delete``, ``move`` to a dated archive,
   or ``keep``) and marked ``completed``. A failed delete or move leaves it ``processed`` for the
   next run.
4. A file that failed ``max_attempts`` times goes to the quarantine folder with ``NAME.error.json``
   beside it; the run ends ``partial``. ``toolkit.redrive`` (``nbcron redrive``) puts it back.

In a dry run nothing is claimed, moved or written: the files are read, ``write`` is called with
``batch.dry_run`` set (pass it to ``toolkit.upsert``) and the result shows the plan.

Crash tests set ``NBCRON_FAULT=STEP[@N]`` to SIGKILL the process at the N-th pass through a step
boundary: ``after_claim``, ``after_parse``, ``after_commit``, ``before_complete``,
``after_complete``.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from toolkit.batches import gc_paused
from toolkit.completion import Completer, redrive, safe_name, source_key
from toolkit.context import add_metric, context, mark_partial, metric, state_database
from toolkit.database import missing_sqlite_file, new_engine
from toolkit.errors import NbcronError
from toolkit.ledger import Entry, FileKey, Ledger
from toolkit.outcomes import FileOutcome, ImportResult
from toolkit.progress import progress as bar
from toolkit.sources import Listing, ReadyFile, list_files, open_source, prefetch

__all__ = [
    "FAULT_VARIABLE",
    "STEPS",
    "Batch",
    "ImportResult",
    "import_files",
    "redrive",
    "source_key",
]

FAULT_VARIABLE = "NBCRON_FAULT"
STEPS = ("after_claim", "after_parse", "after_commit", "before_complete", "after_complete")
Completion = Literal["delete", "move", "keep"]
_passes: dict[str, int] = {}


def checkpoint(step: str) -> None:
    """Return at once, unless ``NBCRON_FAULT`` names this step: then die by SIGKILL (a crash)."""
    wanted = os.environ.get(FAULT_VARIABLE)
    if not wanted:
        return
    name, _, nth = wanted.partition("@")
    if name != step:
        return
    _passes[step] = _passes.get(step, 0) + 1
    if _passes[step] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


class PermanentError(NbcronError):
    """A file no retry can fix (an unsafe name, too large): quarantined at the first attempt."""


@dataclass
class Batch:
    """Files read in one batch, handed to ``write``: ``items`` pairs each file with what
    ``read`` returned. ``dry_run`` tells ``write`` to plan instead of writing."""

    items: list[tuple[ReadyFile, Any]]
    dry_run: bool

    @property
    def records(self) -> list[Any]:
        """Return what ``read`` returned for each file, in order."""
        return [value for _, value in self.items]


def _error_text(exc: BaseException) -> dict[str, Any]:
    frames = traceback.extract_tb(exc.__traceback__)[-4:]
    return {
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": [f"{f.filename}:{f.lineno} in {f.name}" for f in frames],
    }


def import_files(
    source: str,
    pattern: str = "*",
    *,
    read: Callable[[ReadyFile], Any],
    write: Callable[[Batch], Any],
    completion: Completion = "delete",
    archive: str | None = None,
    quarantine: str | None = None,
    max_attempts: int = 3,
    batch_size: int = 1000,
    max_bytes: int | None = None,
    state: str | None = None,
    dry_run: bool | None = None,
    lease: float = 600.0,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    **listing: Any,
) -> ImportResult:
    """Return what happened to each file after importing the ready files of ``source``.

    ``read(file)`` turns one file into what ``write`` needs; ``write(batch)`` stores a batch
    and commits. ``completion`` is ``delete``, ``move`` (to ``archive``, default the
    ``.archive`` folder of the source, dated ``YYYY/MM/DD``) or ``keep``. Bad files go to
    ``quarantine`` (default ``.quarantine`` in the source) after ``max_attempts``. ``state`` is the
    ledger's database (default: the run's state database). ``max_bytes`` quarantines larger
    files unread; there is no cap by default, because the parsers stream and bound their own
    memory (XML per record, CSV per field, whole JSON documents at 64 MiB). Other keywords go
    to `list_files`. ``progress`` draws a bar over the files (default: only when someone
    watches interactively; never in a scheduled run's record).
    """
    if completion not in ("delete", "move", "keep"):
        raise ValueError(f"completion={completion!r}; use 'delete', 'move' or 'keep'")
    if max_attempts < 1:
        raise ValueError(f"max_attempts={max_attempts!r} must be at least 1")
    ctx = context()
    dry = ctx.dry_run if dry_run is None else dry_run
    src = open_source(source, storage_options)
    done = Completer(
        src,
        completion,
        archive=archive,
        quarantine=quarantine,
        done_suffix=listing.get("done_suffix"),
    )
    started = time.perf_counter()
    key = source_key(source)
    database = state or state_database()
    result = ImportResult(dry_run=dry)
    run = _Run(result, read, write, done, max_attempts, max_bytes, dry, progress)
    if dry:
        listing.setdefault("probe_clock", False)  # a dry run writes nothing, not even a probe
        ready = _listed(result, list_files(source, pattern, source=src, **listing))
        run.plan(ready, _peek(database, key, ready))
    else:
        ledger = Ledger(database, key, run_id=ctx.run_id, lease=lease)
        run.ledger = ledger
        try:
            run.finish_leftovers()  # before listing, so a file completed now is not listed
            with gc_paused():  # ten thousand ready files are no cycles either
                ready = _listed(result, list_files(source, pattern, source=src, **listing))
            starts = range(0, len(ready), batch_size)
            for i in bar(starts, desc=f"files, {batch_size} a batch", progress=progress):
                # A batch leaves thousands of young objects (records, rows, entries) and no
                # cycles worth chasing; the collector, left on, re-scans them again and again
                # (measured: a tenth of the run). It runs between batches instead.
                with gc_paused():
                    run.batch(ready[i : i + batch_size])
        finally:
            ledger.release()
        _report(result)
        metric("import_s", round(time.perf_counter() - started, 3))
    return result


def _listed(result: ImportResult, listing: Listing) -> Listing:
    result.skipped, result.capped = listing.skipped, listing.capped
    return listing


def _peek(database: str, key: str, files: list[ReadyFile]) -> dict[FileKey, Entry]:
    """Return the ledger's entries for ``files`` without creating or writing anything."""
    import sqlalchemy as sa

    engine = new_engine(database)
    try:
        if missing_sqlite_file(engine.url) or not sa.inspect(engine).has_table("nbcron_files"):
            return {}
        ledger = Ledger.__new__(Ledger)
        ledger.engine, ledger.source = engine, key
        return ledger.lookup(_key(f) for f in files)
    finally:
        engine.dispose()


def _key(file: ReadyFile) -> FileKey:
    return (file.name, file.size, file.stamp)


@dataclass
class _Run:
    result: ImportResult
    read: Callable[[ReadyFile], Any]
    write: Callable[[Batch], Any]
    done: Completer
    max_attempts: int
    max_bytes: int | None
    dry: bool
    progress: bool | None = None
    ledger: Ledger = field(init=False)

    def outcome(self, name: str, size: int, action: str, **extra: Any) -> None:
        self.result.files.append(FileOutcome(name, size, action, **extra))

    def load(self, file: ReadyFile) -> Any:
        if safe_name(file.name) != file.name:
            raise PermanentError(
                f"unsafe file name {file.name!r} (path separators, '..' or control characters); "
                "rename it at the source, or re-drive it from quarantine"
            )
        if self.max_bytes is not None and file.size > self.max_bytes:
            raise PermanentError(
                f"{file.name}: {file.size} bytes is over max_bytes={self.max_bytes}; raise "
                "max_bytes if files this large are expected"
            )
        return self.read(file)

    def plan(self, files: list[ReadyFile], known: dict[FileKey, Entry]) -> None:
        items: list[tuple[ReadyFile, Any]] = []
        for file in bar(files, desc="files read", progress=self.progress):
            entry = known.get(_key(file))
            if entry is not None and entry.state in ("processed", "completed", "quarantined"):
                self.outcome(file.name, file.size, f"already {entry.state}")
                continue
            try:
                items.append((file, self.load(file)))
            except Exception as exc:
                self.outcome(file.name, file.size, "would fail", error=_error_text(exc)["error"])
        if items:
            self.result.outputs.append(self.write(Batch(items, True)))
        for file, _ in items:
            self.outcome(file.name, file.size, "would import")

    def finish_leftovers(self) -> None:
        """Complete what earlier runs committed, quarantine what they gave up on."""
        led = self.ledger
        stuck = led.entries("processed") + [
            e for e in led.entries("failed") if e.attempts >= self.max_attempts
        ]
        for entry in led.adopt(stuck):
            if entry.state == "processed":
                self.complete([(entry.key, entry.destination)], earlier=True)
            else:
                self.quarantine(entry.key, entry.size, entry.error or "", entry.attempts)

    def batch(self, files: list[ReadyFile]) -> None:
        led = self.ledger
        by_key = {_key(f): f for f in files}
        mine, known = led.claim_and_look(list(by_key), max_attempts=self.max_attempts)
        for k, entry in known.items():
            self.outcome(k[0], k[1], _not_claimed(entry, self.max_attempts))
        checkpoint("after_claim")
        items: list[tuple[ReadyFile, Any]] = []
        ahead = prefetch([by_key[k] for k in mine])  # the same files, in the same order
        for file, entry in zip(ahead, mine.values(), strict=True):
            try:
                items.append((file, self.load(file)))
            except Exception as exc:
                self.fail(file, entry, exc)
        # one metric update per batch: each one rewrites the run's report file
        add_metric("bytes_read", sum(f.size for f, _ in items))
        checkpoint("after_parse")
        written = self.write_all(items, mine)
        checkpoint("after_commit")
        if not written:
            return
        keys = [_key(f) for f in written]
        destinations = {
            k: self.done.destination(f.name) for k, f in zip(keys, written, strict=True)
        }
        led.mark(destinations, "processed", destinations=destinations)
        checkpoint("before_complete")
        for k, f in zip(keys, written, strict=True):
            self.outcome(f.name, f.size, "imported", attempts=mine[k].attempts + 1)
        self.complete(list(destinations.items()), earlier=False)

    def write_all(
        self, items: list[tuple[ReadyFile, Any]], mine: dict[FileKey, Entry]
    ) -> list[ReadyFile]:
        """Return the files whose rows were committed; a failed batch is retried file by file."""
        if not items:
            return []
        try:
            self.result.outputs.append(self.write(Batch(items, False)))
            return [f for f, _ in items]
        except Exception as exc:
            if len(items) == 1:
                self.fail(items[0][0], mine[_key(items[0][0])], exc)
                return []
        ok: list[ReadyFile] = []
        for item in items:
            ok += self.write_all([item], mine)
        return ok

    def fail(self, file: ReadyFile, entry: Entry, exc: BaseException) -> None:
        attempts = entry.attempts + 1
        info = _error_text(exc)
        error = json.dumps(info)
        self.ledger.mark([_key(file)], "failed", error=error, add_attempt=True, release=True)
        if attempts >= self.max_attempts or isinstance(exc, PermanentError):
            self.ledger.adopt(self.ledger.lookup([_key(file)]).values())
            self.quarantine(_key(file), file.size, error, attempts)
        else:
            add_metric("files_failed")
            self.outcome(
                file.name,
                file.size,
                f"failed (attempt {attempts} of {self.max_attempts})",
                attempts=attempts,
                error=info["error"],
            )

    def quarantine(self, key: FileKey, size: int, error: str, attempts: int) -> None:
        try:
            where = self.done.quarantine(key, error, attempts, self.ledger.run_id)
        except Exception as exc:
            self.outcome(key[0], size, "quarantine failed", error=_error_text(exc)["error"])
            return
        self.ledger.mark([key], "quarantined", release=True, destination=where)
        add_metric("files_quarantined")
        self.outcome(
            key[0],
            size,
            "quarantined",
            attempts=attempts,
            error=_error_from(error),
            destination=where,
        )

    def complete(self, todo: list[tuple[FileKey, str | None]], *, earlier: bool) -> None:
        finished: list[FileKey] = []
        bulk = self.done.bulk_delete
        failed = self.done.delete_many([k[0] for k, _ in todo]) if bulk else {}
        armed = bool(os.environ.get(FAULT_VARIABLE))  # looked up once, not once a file
        for key, dest in todo:
            try:
                if key[0] in failed:
                    raise failed[key[0]]
                if not bulk:
                    self.done.complete(key[0], dest)
            except Exception as exc:
                err = _error_text(exc)["error"]
                self.ledger.mark([key], "processed", error=err, release=True)
                self.result.set(
                    key[0], key[1], "imported; completion failed, retried next run", err
                )
                continue
            if armed:
                checkpoint("after_complete")
            finished.append(key)
            if earlier:
                self.outcome(key[0], key[1], "completed (imported earlier)", destination=dest)
        self.ledger.mark(finished, "completed", release=True)
        add_metric("files_completed", len(finished))


def _not_claimed(entry: Entry, max_attempts: int) -> str:
    if entry.state == "completed":
        return "already imported"
    if entry.state == "quarantined":
        return "already quarantined"
    if entry.state == "failed" and entry.attempts >= max_attempts:
        return "waiting for quarantine"
    return "busy in another run"


def _error_from(error: str) -> str:
    try:
        return str(json.loads(error)["error"])
    except (ValueError, KeyError, TypeError):
        return error


def _report(result: ImportResult) -> None:
    counts = result.counts()
    add_metric("files_seen", len(result.files) + len(result.skipped))
    add_metric("files_imported", counts.get("imported", 0))
    add_metric("files_skipped", len(result.skipped))
    groups: tuple[tuple[str, Callable[[str], bool]], ...] = (
        ("failed, tried again by the next run", lambda a: a.startswith("failed")),
        ("quarantined (`nbcron redrive` puts a file back)", lambda a: a == "quarantined"),
        (
            "could not be moved to quarantine; tried again by the next run",
            lambda a: a == "quarantine failed",
        ),
        (
            "imported, but the delete or move failed; retried by the next run",
            lambda a: "completion failed" in a,
        ),
    )
    said = []
    for label, matches in groups:
        names = [f.name for f in result.files if matches(f.action)]
        if names:
            shown = ", ".join(repr(n) for n in names[:10])
            more = f" and {len(names) - 10} more" if len(names) > 10 else ""
            files = "file" if len(names) == 1 else "files"
            said.append(f"{len(names)} {files} {label}: {shown}{more}")
    if said:
        mark_partial("; ".join(said))
