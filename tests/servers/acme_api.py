"""The Acme app's REST API, as a real local server: collections of JSON records addressed by key.

    GET    /{collection}/{key}[/{key2}...]   the record, or 404
    GET    /{collection}?field=value         the matching records, as a list
    POST   /{collection}                     create (409 if the key exists), 201 + the record
    PUT    /{collection}/{key}...            replace (404 if missing), 200 + the record
    PATCH  /{collection}/{key}...            merge fields into the record
    DELETE /{collection}/{key}...            204, or 404

Like a real app it checks a bearer token (when given one), validates fields against a schema
(422 ``{"errors": {"field": "message"}}``), and honours ``Idempotency-Key``: a repeated key with
the same request gets the first answer again (header ``Idempotent-Replayed: true``) without being
applied twice. Fault injection (429 / 5xx) comes from `tests.servers.JsonServer`.

A schema maps a field to ``"str" | "int" | "number" | "datetime" | "bool" | "any"``, with a
trailing ``!`` for required, or to a nested schema dict for a list of child records.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tests.servers import JsonServer, Reply, Request

__all__ = ["ACME_SCHEMAS", "AcmeApi"]

Schema = Mapping[str, Any]

ACME_SCHEMAS: dict[str, tuple[tuple[str, ...], Schema]] = {
    "orders": (
        ("order_id",),
        {
            "order_id": "str!",
            "customer": "str!",
            "status": "str",
            "currency": "str",
            "revision": "int",
            "updated_at": "datetime",
            "total": "number",
            "order_lines": {
                "line_no": "int!",
                "sku": "str!",
                "qty": "int!",
                "unit_price": "number!",
            },
        },
    ),
}


@dataclass
class _Collection:
    key: tuple[str, ...]
    schema: Schema | None
    records: dict[tuple[str, ...], dict[str, Any]] = field(default_factory=dict)


class AcmeApi(JsonServer):
    """Acme's REST API on 127.0.0.1; ``token`` makes it require ``Authorization: Bearer token``."""

    def __init__(self, token: str | None = None, *, acme_collections: bool = True) -> None:
        super().__init__()
        self.token = token
        self.collections: dict[str, _Collection] = {}
        self._replies: dict[str, tuple[str, Reply]] = {}
        if acme_collections:
            for name, (key, schema) in ACME_SCHEMAS.items():
                self.add_collection(name, key, schema)

    def add_collection(
        self, name: str, key: str | Sequence[str], schema: Schema | None = None
    ) -> None:
        """Serve a collection whose records are identified by ``key``; ``schema`` validates."""
        keys = (key,) if isinstance(key, str) else tuple(key)
        with self._lock:
            self.collections[name] = _Collection(keys, schema)

    def records(self, name: str) -> list[dict[str, Any]]:
        """Return copies of a collection's records, ordered by key."""
        with self._lock:
            found = self.collections[name].records
            return [copy.deepcopy(found[k]) for k in sorted(found)]

    def checksum(self) -> str:
        """Return a digest of every stored record, to show that nothing changed."""
        with self._lock:
            state = {n: sorted(c.records.items()) for n, c in self.collections.items()}
        return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()

    # -- requests ------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            return Reply(401, {"error": "missing or wrong bearer token"})
        idem = request.headers.get("idempotency-key")
        if idem and request.method != "GET":
            fingerprint = json.dumps([request.method, request.path, request.body], sort_keys=True)
            seen = self._replies.get(idem)
            if seen is not None:
                if seen[0] != fingerprint:
                    return Reply(422, {"error": "Idempotency-Key reused for a different request"})
                replay = seen[1]
                return Reply(replay.status, replay.body, {"Idempotent-Replayed": "true"})
            reply = self._route(request)
            if reply.status < 500:
                self._replies[idem] = (fingerprint, reply)
            return reply
        return self._route(request)

    def _route(self, request: Request) -> Reply:
        if not request.parts or request.parts[0] not in self.collections:
            return Reply(404, {"error": f"no collection at {request.path}"})
        coll = self.collections[request.parts[0]]
        key = tuple(request.parts[1:])
        method = request.method
        if key and len(key) != len(coll.key):
            return Reply(404, {"error": f"a key here has {len(coll.key)} parts"})
        if method == "GET":
            return self._get(coll, key, request.query)
        if method == "POST" and not key:
            return self._create(coll, request.body)
        if method in ("PUT", "PATCH") and key:
            return self._replace(coll, key, request.body, merge=method == "PATCH")
        if method == "DELETE" and key:
            return Reply(204) if coll.records.pop(key, None) is not None else Reply(404)
        return Reply(405, {"error": f"{method} is not allowed on {request.path}"})

    def _get(self, coll: _Collection, key: tuple[str, ...], query: dict[str, list[str]]) -> Reply:
        if key:
            found = coll.records.get(key)
            return Reply(200, found) if found is not None else Reply(404, {"error": "not found"})
        matches = [
            r
            for r in coll.records.values()
            if all(str(r.get(f)) == values[0] for f, values in query.items())
        ]
        return Reply(200, matches)

    def _create(self, coll: _Collection, body: Any) -> Reply:
        errors = _validate(body, coll.schema, coll.key)
        if errors:
            return Reply(422, {"errors": errors})
        key = tuple(str(body[k]) for k in coll.key)
        if key in coll.records:
            return Reply(409, {"error": f"a record with key {'/'.join(key)} exists"})
        coll.records[key] = copy.deepcopy(body)
        return Reply(201, body)

    def _replace(self, coll: _Collection, key: tuple[str, ...], body: Any, merge: bool) -> Reply:
        if key not in coll.records:
            return Reply(404, {"error": "not found"})
        new = {**coll.records[key], **body} if merge and isinstance(body, dict) else body
        errors = _validate(new, coll.schema, coll.key)
        if errors:
            return Reply(422, {"errors": errors})
        if tuple(str(new[k]) for k in coll.key) != key:
            return Reply(422, {"errors": {coll.key[0]: "does not match the record's URL"}})
        coll.records[key] = copy.deepcopy(new)
        return Reply(200, new)


def _validate(body: Any, schema: Schema | None, key: Sequence[str] = ()) -> dict[str, str]:
    if not isinstance(body, dict):
        return {"": "the body must be a JSON object"}
    errors: dict[str, str] = {}
    for k in key:
        if body.get(k) is None:
            errors[k] = "is required"
    for name, rule in (schema or {}).items():
        value = body.get(name)
        if isinstance(rule, Mapping):
            if value is None:
                continue
            if not isinstance(value, list):
                errors[name] = "must be a list"
                continue
            for i, child in enumerate(value):
                for field_name, message in _validate(child, rule).items():
                    errors.setdefault(f"{name}[{i}].{field_name}", message)
            continue
        kind, required = rule.rstrip("!"), rule.endswith("!")
        if value is None:
            if required:
                errors[name] = "is required"
        elif not _fits(kind, value):
            errors[name] = f"must be {'an' if kind == 'int' else 'a'} {kind}"
    return errors


def _fits(kind: str, value: Any) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                return False
            return True
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "datetime":
        try:
            datetime.fromisoformat(value)
        except (TypeError, ValueError):
            return False
        return True
    return True
