"""The demo partner API: orders changed since a timestamp, paged, as DESIGN.md describes it.

    GET /orders?updated_since=ISO&page=N&per_page=M  {"orders": [...], "next_page": N | null}

Orders come ordered by ``updated_at`` then ``order_id``; ``updated_since`` is inclusive. The same
data is also served with the other pagination styles a partner may use (for tests and examples):

    GET /offset/orders?updated_since=&offset=&limit=     {"orders": [...]}
    GET /cursor/orders?updated_since=&cursor=&limit=     {"orders": [...], "next_cursor": T | null}
    GET /link/orders?updated_since=&page=&per_page=      {"orders": [...]}, ``Link: <..>; rel=next``

`PartnerOrders` is the data and the routing, with no HTTP; ``nbcron demo`` serves it on 127.0.0.1
with `start_demo_partner_api`, and the tests wrap it in their fault-injecting server. With a token
it wants ``Authorization: Bearer TOKEN`` and answers 401 otherwise.
"""

from __future__ import annotations

import base64
import bisect
import copy
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

__all__ = ["PartnerOrders", "demo_orders", "start_demo_partner_api"]

Answer = tuple[int, Any, dict[str, str]]


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class PartnerOrders:
    """The partner's orders, changeable between polls, and the answers to the API's requests."""

    def __init__(self, orders: Iterable[Mapping[str, Any]] = (), token: str | None = None) -> None:
        self.token = token
        self._orders: dict[str, dict[str, Any]] = {}
        self._order: list[tuple[datetime, str]] = []  # (updated_at, order_id), sorted
        self._lock = threading.RLock()
        self.put(*orders)

    def put(self, *orders: Mapping[str, Any]) -> None:
        """Create or replace orders (each needs ``order_id`` and ``updated_at``)."""
        with self._lock:
            for order in orders:
                order_id = str(order["order_id"])
                old = self._orders.get(order_id)
                if old is not None:
                    self._order.remove((_moment(old["updated_at"]), order_id))
                record = copy.deepcopy(dict(order))
                record["updated_at"] = _iso(_moment(str(record["updated_at"])))
                self._orders[order_id] = record
                bisect.insort(self._order, (_moment(record["updated_at"]), order_id))

    def orders(self) -> list[dict[str, Any]]:
        """Return copies of every order, in the API's order."""
        with self._lock:
            return [copy.deepcopy(self._orders[i]) for _, i in self._order]

    def answer(
        self, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str]
    ) -> Answer:
        """Return (status, JSON body, headers) for ``GET path?query``; header names lower case."""
        if self.token and headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "missing or wrong bearer token"}, {}
        style = path.strip("/").split("/")
        if style[-1] != "orders" or len(style) > 2:
            return 404, {"error": f"no such endpoint {path}; try /orders"}, {}
        try:
            args = {k: v[0] for k, v in query.items()}
            since = _moment(args["updated_since"]) if args.get("updated_since") else None
            with self._lock:
                first = 0 if since is None else bisect.bisect_left(self._order, (since, ""))
                return self._page(style[0] if len(style) == 2 else "page", first, args, path)
        except (ValueError, KeyError) as exc:
            return 400, {"error": f"bad query parameter: {exc}"}, {}

    def _page(self, style: str, first: int, args: dict[str, str], path: str) -> Answer:
        if style in ("page", "link"):
            size = int(args.get("per_page", "100"))
            number = int(args.get("page", "1"))
            if size < 1 or number < 1:
                raise ValueError("page and per_page start at 1")
            start = first + (number - 1) * size
            found = self._slice(start, size)
            more = start + size < len(self._order)
            if style == "page":
                return 200, {"orders": found, "next_page": number + 1 if more else None}, {}
            headers = {}
            if more:
                query = urlencode({**args, "page": number + 1})
                headers["Link"] = f'<{path}?{query}>; rel="next"'
            return 200, {"orders": found}, headers
        if style == "offset":
            limit = int(args.get("limit", "100"))
            return 200, {"orders": self._slice(first + int(args.get("offset", "0")), limit)}, {}
        if style == "cursor":
            limit = int(args.get("limit", "100"))
            start = first
            if args.get("cursor"):
                when, order_id = base64.urlsafe_b64decode(args["cursor"]).decode().split("|")
                start = max(first, bisect.bisect_right(self._order, (_moment(when), order_id)))
            found = self._slice(start, limit)
            token = None
            if found and start + limit < len(self._order):
                last = f"{found[-1]['updated_at']}|{found[-1]['order_id']}"
                token = base64.urlsafe_b64encode(last.encode()).decode()
            return 200, {"orders": found, "next_cursor": token}, {}
        raise KeyError(f"pagination style {style!r}")

    def _slice(self, start: int, size: int) -> list[dict[str, Any]]:
        return [copy.deepcopy(self._orders[i]) for _, i in self._order[start : start + size]]


def demo_orders(n: int = 120, *, until: datetime | None = None) -> list[dict[str, Any]]:
    """Return ``n`` sample partner orders, one every 7 minutes up to an hour before ``until``."""
    until = until or datetime.now(UTC).replace(microsecond=0)
    customers = ["Globex GmbH", "Initech AG", "Umbrella SARL", "Hooli BV", "Soylent Oy"]
    orders = []
    for i in range(n):
        lines = [
            {"sku": f"X-{(i + j) % 17 + 1}", "qty": 1 + (i + j) % 4, "unit_price": "9.50"}
            for j in range(1 + i % 3)
        ]
        orders.append(
            {
                "order_id": f"P-{i + 1:05d}",
                "customer": customers[i % len(customers)],
                "status": ["open", "shipped", "invoiced"][i % 3],
                "currency": "EUR",
                "revision": 1 + i % 2,
                "updated_at": _iso(until - timedelta(hours=1, minutes=7 * (n - i))),
                "lines": lines,
            }
        )
    return orders


def serve(data: PartnerOrders, port: int = 0) -> tuple[str, Callable[[], None]]:
    """Return (base URL, stop) of ``data`` served on 127.0.0.1:``port`` in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            split = urlsplit(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, body, extra = data.answer(split.path, parse_qs(split.query), headers)
            raw = json.dumps(body).encode()
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="demo-partner-api", daemon=True)
    thread.start()
    host, bound = httpd.server_address[:2]

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

    return f"http://{host!s}:{bound}", stop


def start_demo_partner_api(data_dir: Path, port: int = 0) -> tuple[str, Callable[[], None]]:
    """Return (base URL, stop) of the demo partner API, serving `demo_orders` on 127.0.0.1.

    It wants the bearer token in ``data_dir/demo_token.txt`` when that file exists (the demo's
    schedules hand the same file to the notebook as a secret).
    """
    token_file = Path(data_dir) / "demo_token.txt"
    token = token_file.read_text(encoding="utf-8").strip() if token_file.exists() else None
    return serve(PartnerOrders(demo_orders(), token=token or None), port)


if __name__ == "__main__":  # python -m toolkit.demo_partner [DATA_DIR]: try it from JupyterLab
    import sys
    import time

    url, stop = start_demo_partner_api(Path(sys.argv[1] if len(sys.argv) > 1 else "data"), 8790)
    print(f"demo partner API on {url}/orders (Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stop()
