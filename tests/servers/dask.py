"""A Dask ``LocalCluster`` on 127.0.0.1 with two named worker processes: "big" declares worker
resources, "small" none, so tests can check where a schedule's ``resources:`` send its runs."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def big_and_small(resources: dict[str, float], threads: int = 1) -> Iterator[Any]:
    """Return (as a context) a client of the cluster; the workers stop when it closes."""
    import distributed

    local = distributed.LocalCluster(
        n_workers=0,
        processes=True,
        threads_per_worker=threads,
        host="127.0.0.1",
        dashboard_address=":0",
        worker_dashboard_address=None,
    )
    big = copy.deepcopy(local.new_spec)
    big["options"]["resources"] = dict(resources)
    local.worker_spec["big"] = big
    local.worker_spec["small"] = copy.deepcopy(local.new_spec)
    local.sync(local._correct_state)
    client = distributed.Client(local, set_as_default=False)
    try:
        client.wait_for_workers(2, timeout=120)
        yield client
    finally:
        client.close()
        local.close()
