"""The partner API of DESIGN.md as a real local server, with fault injection and a request log.

    with PartnerApi(token="t0k3n") as api:
        api.data.put({"order_id": "A-1", "updated_at": "2026-12-04T10:15:00Z", ...})
        api.fail_next(1, status=429, retry_after=2)
        ...  # GET {api.url}/orders?updated_since=...&page=1&per_page=50

The data and the routing (page, offset, next-cursor and Link-header endpoints) are
`toolkit.demo_partner.PartnerOrders`, the same that ``nbcron demo`` serves; this wraps it in
`tests.servers.JsonServer` for 429/5xx injection and the log of requests the tests look at.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tests.servers import JsonServer, Reply, Request
from toolkit.demo_partner import PartnerOrders

__all__ = ["PartnerApi", "order"]


class PartnerApi(JsonServer):
    """The partner's order API on 127.0.0.1; ``token`` makes it require a bearer token."""

    def __init__(self, orders: Iterable[Mapping[str, Any]] = (), token: str | None = None) -> None:
        super().__init__()
        self.data = PartnerOrders(orders, token=token)

    def handle(self, request: Request) -> Reply:
        if request.method != "GET":
            return Reply(405, {"error": "this API only answers GET"})
        status, body, headers = self.data.answer(request.path, request.query, request.headers)
        return Reply(status, body, headers)

    def gets(self, path: str = "/orders") -> list[Request]:
        """Return the GET requests that reached ``path``."""
        return [r for r in self.requests if r.method == "GET" and r.path == path]


def order(order_id: str, updated_at: str, revision: int = 1, **fields: Any) -> dict[str, Any]:
    """Return a partner order with one line (``fields`` override the defaults)."""
    return {
        "order_id": order_id,
        "customer": "Globex GmbH",
        "status": "open",
        "currency": "EUR",
        "revision": revision,
        "updated_at": updated_at,
        "lines": [{"sku": "X-1", "qty": 2, "unit_price": "9.50"}],
        **fields,
    }
