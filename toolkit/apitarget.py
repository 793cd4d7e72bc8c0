"""Upsert into an app through its REST API: look each row up by key, then create or update it.

For a table ``orders`` and a row keyed ``A-1`` an `ApiTarget` speaks, relative to its base URL::

    GET  orders/A-1     the stored record (404: there is none)
    POST orders         create, body = the row as JSON (children nested under their table name)
    PUT  orders/A-1     update, same body

Each write carries an ``Idempotency-Key`` derived from the table, key, row content and the state it
replaces, so a retried request the server already applied is not applied twice. Retries of 429
and 5xx are `toolkit.apiclient`'s. An HTTP API cannot roll back, so when a write is refused the
call first undoes its earlier writes (deletes what it created, puts back what it changed).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx

from toolkit.apiclient import Refused, RetryPolicy, refusal, send
from toolkit.batches import Action, Chunk, Job, PlanRows, Tally, child_changes, key_text
from toolkit.columns import is_missing, native
from toolkit.context import context, secret
from toolkit.errors import UpsertError

__all__ = ["ApiTarget"]

_calls = itertools.count()
_ISO_MOMENT = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


@dataclass
class ApiTarget:
    """An app's REST API as an upsert target; ``auth_secret`` names a `toolkit.secret`.

    ``collection_path`` and ``item_path`` are relative to ``base_url``; ``{key}`` is the key
    value (URL-quoted; the parts of a composite key joined by ``/``).
    """

    base_url: str
    auth_secret: str | None = None
    auth_scheme: str = "Bearer"
    auth_header: str = "Authorization"
    collection_path: str = "{table}"
    item_path: str = "{table}/{key}"
    update_method: str = "PUT"
    idempotency_header: str | None = "Idempotency-Key"
    timeout: float = 30.0
    headers: Mapping[str, str] = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def run(self, job: Job, *, write: bool, plan: PlanRows | None) -> Tally:
        """Apply (or with ``write=False`` only look up and classify) the job's rows."""
        headers = dict(self.headers)
        if self.auth_secret:
            token = secret(self.auth_secret)
            headers[self.auth_header] = f"{self.auth_scheme} {token}".strip()
        base = self.base_url.rstrip("/") + "/"
        with httpx.Client(base_url=base, headers=headers, timeout=self.timeout) as client:
            return _ApiCall(self, client, job, write, plan).run()

    def path(self, table: str, key: tuple[Any, ...] | None = None) -> str:
        """Return the collection path, or the item path of ``key``, relative to the base URL."""
        name = quote(table, safe="")
        if key is None:
            return self.collection_path.format(table=name)
        item = "/".join(quote(str(v), safe="") for v in key)
        return self.item_path.format(table=name, key=item)

    def send(
        self, client: httpx.Client, method: str, path: str, body: Any = None, key: str | None = None
    ) -> httpx.Response:
        """Return the response, with retries; ``key`` goes in the idempotency header."""
        headers = {self.idempotency_header: key} if key and self.idempotency_header else {}
        return send(client, method, path, self.retry, body=body, headers=headers)


@dataclass
class _Undo:
    method: str
    path: str
    body: Any
    of: str  # the idempotency key of the write this undoes


class _ApiCall:
    """One upsert call through one HTTP client."""

    def __init__(
        self, api: ApiTarget, client: httpx.Client, job: Job, write: bool, plan: PlanRows | None
    ) -> None:
        self.api, self.client, self.job, self.write, self.plan = api, client, job, write, plan
        self.tally = Tally()
        self.undo: list[_Undo] = []
        self.shadow: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.kids = {name: self._group(name, rows) for name, rows in job.children.items()}
        self.used: set[tuple[Any, ...]] = set()
        # Deterministic per (run, n-th upsert call of the process): a retried request, or a
        # re-execution of the same run, repeats its keys; another call or run gets fresh ones.
        self.call_id = f"{context().run_id}#{next(_calls)}"

    def run(self) -> Tally:
        try:
            for chunk in self.job.rows:
                self._chunk(chunk)
            for name, groups in self.kids.items():
                orphans = [k for k in groups if k not in self.used]
                if orphans:
                    raise UpsertError(
                        f"{name}: child rows for {key_text(self.job.key, orphans[0])} have no "
                        f"parent row in {self.job.table!r} in this call; pass each parent with "
                        "its children",
                        table=name,
                    )
        except UpsertError as exc:
            if not self.undo:
                raise
            # Rows of a later chunk were bad after earlier chunks were written: undo those.
            raise UpsertError(f"{exc}; {self._rollback()}", **exc.fields) from exc
        return self.tally

    def _group(self, name: str, rows: Chunk) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for i, row in enumerate(self._records(name, rows)):
            k = tuple(row.pop(c) for c in self.job.key)
            groups.setdefault(k, []).append(row)
            if any(v is None for v in k):
                raise UpsertError(f"{name}: child row {i} has no value for the parent key")
        return groups

    def _records(self, table: str, chunk: Chunk) -> list[dict[str, Any]]:
        missing = [k for k in self.job.key if k not in chunk.columns]
        if missing:
            raise UpsertError(
                f"{table}: the rows have no key column {missing[0]!r} "
                f"(they have: {', '.join(chunk.columns)})",
                table=table,
                column=missing[0],
            )
        records: list[dict[str, Any]] = []
        for i, values in enumerate(zip(*chunk.data, strict=True)):
            row = dict(zip(chunk.columns, values, strict=True))
            try:
                records.append({c: _json(v) for c, v in row.items()})
            except ValueError as exc:
                column = next(c for c, v in row.items() if not _jsonable(v))
                where = self._where(row, chunk.offset + i)
                raise UpsertError(
                    f"{table}: {where}, column {column!r}: {exc}; nothing was written",
                    table=table,
                    column=column,
                ) from None
        return records

    def _where(self, row: Mapping[str, Any], index: int) -> str:
        values = [row.get(k) for k in self.job.key]
        if any(is_missing(v) for v in values):
            return f"row {index} of the input"
        return f"row {key_text(self.job.key, [_json(v) for v in values])}"

    def _chunk(self, chunk: Chunk) -> None:
        job = self.job
        todo: list[tuple[Action, tuple[Any, ...], dict[str, Any], dict[str, Any] | None]] = []
        for i, row in enumerate(self._records(job.table, chunk)):
            k = tuple(row[c] for c in job.key)
            if any(v is None for v in k) or (job.version and row.get(job.version) is None):
                what = "a key" if any(v is None for v in k) else f"a {job.version!r}"
                raise UpsertError(
                    f"{job.table}: {self._where(row, chunk.offset + i)} has no value for {what}",
                    table=job.table,
                )
            for name, groups in self.kids.items():
                row[name] = groups.get(k, [])
            self.used.add(k)
            old = self.shadow.get(k) if k in self.shadow else self._lookup(k)
            action, changes = self._classify(row, old)
            self.tally.add(action)
            if self.plan is not None:
                self.plan.add(k, action, changes)
            if action in ("insert", "update"):
                todo.append((action, k, row, old))
                self.shadow[k] = row  # later rows with this key compare with this one
        if self.write:
            for action, k, row, old in todo:
                self._apply(action, k, row, old)
        if self.write:
            self.shadow.clear()  # written now: lookups see it

    def _lookup(self, key: tuple[Any, ...]) -> dict[str, Any] | None:
        path = self.api.path(self.job.table, key)
        try:
            response = self.api.send(self.client, "GET", path)
        except Refused as exc:
            raise self._failed(key, exc) from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._failed(key, refusal("GET", path, response))
        found = response.json()
        if isinstance(found, list):
            found = found[0] if found else None
        return found if isinstance(found, dict) or found is None else None

    def _classify(
        self, row: dict[str, Any], old: dict[str, Any] | None
    ) -> tuple[Action, dict[str, Any] | None]:
        if old is None:
            return "insert", None
        version = self.job.version
        if version and old.get(version) is not None:
            new_v, old_v = _loose(row[version]), _loose(old[version])
            try:
                if new_v < old_v:
                    return "stale", {version: [old[version], row[version]]}
            except TypeError:
                pass  # not comparable: let the content decide
        changes: dict[str, Any] = {}
        for c, v in row.items():
            if c in self.kids:
                before = [_kid(r, v) for r in old.get(c) or []]
                after = [_kid(r, v) for r in v]
                if Counter(before) != Counter(after):
                    changes[c] = child_changes(before, after)
            elif _loose(v) != _loose(old.get(c)):
                changes[c] = [old.get(c), v]
        return ("update", changes) if changes else ("unchanged", None)

    def _apply(
        self, action: Action, key: tuple[Any, ...], row: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        api, table = self.api, self.job.table
        idem = _idempotency_key(self.call_id, table, key, row, old)
        if action == "insert":
            method, path = "POST", api.path(table)
        else:
            method, path = api.update_method, api.path(table, key)
        try:
            response = api.send(self.client, method, path, row, idem)
            if response.status_code >= 300:
                raise refusal(method, path, response)
        except Refused as exc:
            raise self._failed(key, exc) from exc
        if action == "insert":
            self.undo.append(_Undo("DELETE", api.path(table, key), None, idem))
        else:
            self.undo.append(_Undo(api.update_method, path, old, idem))

    def _failed(self, key: tuple[Any, ...], exc: Refused) -> UpsertError:
        after = self._rollback()
        table = self.job.table
        column = f", column {exc.column!r}" if exc.column else ""
        status = f"HTTP {exc.status} from " if exc.status else ""
        request = f" ({status}{exc.method} {exc.path})" if exc.method else ""
        return UpsertError(
            f"{table}: row {key_text(self.job.key, key)}{column}: {exc.detail}{request}; {after}",
            table=table,
            key=key_text(self.job.key, key),
            column=exc.column,
            status=exc.status,
        )

    def _rollback(self) -> str:
        """Undo this call's writes, newest first; return what that achieved, for the message."""
        problems: list[str] = []
        done = 0
        while self.undo:
            step = self.undo.pop()
            idem = _idempotency_key("undo", step.method, step.path, step.body, step.of)
            try:
                response = self.api.send(self.client, step.method, step.path, step.body, idem)
                if response.status_code >= 300 and response.status_code != 404:
                    raise refusal(step.method, step.path, response)
                done += 1
            except Refused as exc:
                problems.append(f"{step.method} {step.path}: {exc.detail}")
        if problems:
            return f"could not undo {len(problems)} earlier writes: {problems[0]}"
        if done:
            return f"undid the {done} earlier writes of this call, so nothing is changed"
        return "nothing was written"


def _idempotency_key(*parts: Any) -> str:
    """Return the key for a write: the same for the same parts, so a retry is recognised.

    A write is (call, table, row key, row content, the stored state it replaces): a retried
    request repeats it exactly, while a later call that must create the row again (someone
    deleted it, or an undo did) gets a fresh key instead of the server's memory of the old one.
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _json(v: Any) -> Any:
    """Return ``v`` as a JSON value: times as ISO 8601, decimals as numbers where exact."""
    if v is None or type(v) in (str, bool, int):
        return v
    if is_missing(v):
        return None
    v = native(v)
    for plain in (bool, int, float, str):
        if isinstance(v, plain):
            return plain(v)
    if isinstance(v, Decimal):
        return float(v) if Decimal(repr(float(v))) == v else str(v)
    if isinstance(v, datetime):
        v = v.to_pydatetime(warn=False) if hasattr(v, "to_pydatetime") else v
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).isoformat()
    if isinstance(v, (date, time)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return [_json(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json(x) for k, x in v.items()}
    raise ValueError(f"a {type(v).__name__} cannot be sent as JSON")


def _jsonable(v: Any) -> bool:
    try:
        _json(v)
    except ValueError:
        return False
    return True


def _loose(v: Any) -> Any:
    """Return a comparable form in which 9.5 equals "9.50"-as-number and times equal by instant."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return Decimal(repr(v)) if isinstance(v, float) else Decimal(v)
    if isinstance(v, str):
        if _ISO_MOMENT.match(v):
            try:
                t = datetime.fromisoformat(v)
            except ValueError:
                return v
            return t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)
        return v
    if isinstance(v, list):
        return tuple(_loose(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _loose(x)) for k, x in v.items()))
    return v


def _kid(row: Any, like: list[dict[str, Any]]) -> Any:
    # Compare a stored child only on the fields the new children carry (the API may add ids).
    if not isinstance(row, dict):
        return _loose(row)
    fields = sorted({c for r in like for c in r}) or sorted(row)
    return tuple((c, _loose(row.get(c))) for c in fields)
