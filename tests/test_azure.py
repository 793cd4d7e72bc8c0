"""Azure Blob (Azurite on 127.0.0.1) as a source and an export destination: what is special to it.

The behaviour shared with SFTP and S3 (ready-file rules, claims, completion, quarantine, delivery
with ``if_exists``) runs against Azure through the ``remote_folder`` and file-import fixtures;
these tests cover what a blob store without folders or renames could get wrong.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from tests.orders_files import acme, names, put, read_order, saver
from tests.servers.azure import ACCOUNT, ACCOUNT_KEY, AzureContainer
from toolkit.acme import create_acme_database
from toolkit.demo_files import Order, order_summary_xml
from toolkit.exports import export
from toolkit.imports import import_files
from toolkit.sources import list_files

BLOCK = 1 << 20


@pytest.fixture(autouse=True)
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the delivery ledger of each test in its own database."""
    monkeypatch.setenv("NBCRON_DATABASE", f"sqlite:///{tmp_path}/state.db")


@contextlib.contextmanager
def small_blocks(container: AzureContainer) -> Iterator[None]:
    """Make uploads go block by block (Put Block, then Put Block List), as a file over 64 MB does.

    The Azure SDK sends a blob under ``max_single_put_size`` in one request; shrinking it on the
    client that fsspec shares with the code under test exercises the staged-block path cheaply.
    """
    config = container.fs.service_client._config
    saved = config.max_single_put_size, config.max_block_size
    config.max_single_put_size = config.max_block_size = BLOCK
    try:
        yield
    finally:
        config.max_single_put_size, config.max_block_size = saved


class BlobWatcher:
    """Lists the container in a thread, and counts the blocks staged but not yet committed."""

    def __init__(self, container: AzureContainer, blob: str) -> None:
        self.container = container
        self.blob = blob
        self.committed: set[tuple[str, int]] = set()
        self.staged = 0  # the most uncommitted blocks of ``blob`` seen at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.container.server.client() as client:
            blobs = client.get_container_client(self.container.name)
            blob = blobs.get_blob_client(self.blob)
            while not self._stop.is_set():
                self.committed |= {(b.name, b.size) for b in blobs.list_blobs()}
                _, uncommitted = blob.get_block_list("uncommitted")
                self.staged = max(self.staged, len(uncommitted))

    def __enter__(self) -> BlobWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def report(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(11)
    text = rng.integers(0, 26, size=(rows, 100), dtype=np.uint8) + ord("a")
    return pd.DataFrame({"id": np.arange(rows), "payload": text.view("S100")[:, 0].astype(str)})


def test_an_exported_blob_is_never_visible_half_uploaded(azure: AzureContainer) -> None:
    azure.fs.pipe_file(azure.path("out/big.csv"), b"old report\n")
    with small_blocks(azure), BlobWatcher(azure, "out/big.csv") as watcher:
        result = export(report(80_000), azure.url("out/"), name="big.csv",
                        storage_options=azure.storage_options)  # fmt: skip

    assert result.bytes > 8 * BLOCK
    assert watcher.staged >= 2, "the upload was not seen staged in blocks"
    assert {size for name, size in watcher.committed if name == "out/big.csv"} <= {
        len(b"old report\n"),
        result.bytes,
    }
    assert {name for name, _ in watcher.committed} == {"out/big.csv"}  # no temporary names
    assert azure.blobs() == {"out/big.csv": result.bytes}


def order(order_id: str, revision: int = 1) -> bytes:
    when = datetime(2026, 12, 4, 9, revision, tzinfo=UTC)
    return order_summary_xml(Order(order_id, revision, when, "Globex GmbH", lines=[]))


def test_the_archive_inside_the_inbox_is_not_imported_again(
    azure: AzureContainer, tmp_path: Path
) -> None:
    db = tmp_path / "acme.db"
    create_acme_database(f"sqlite:///{db}")
    put(azure, "inbox/one.xml", order("A-1"))

    def run() -> list[str]:
        result = import_files(
            azure.url("inbox"),
            "*.xml",
            state=f"sqlite:///{tmp_path}/state.db",
            storage_options=azure.storage_options,
            dry_run=False,
            write=saver(f"sqlite:///{db}"),
            read=read_order,
            completion="move",  # to the default archive, inbox/.archive/YYYY/MM/DD/
        )
        return [f.name for f in result.files]

    assert run() == ["one.xml"]
    assert names(azure, "inbox") == []
    assert run() == []  # the archived blob sits under the inbox's prefix: not a new file
    assert [f.name for f in list_files(azure.url("inbox"), "*.xml",
                                       storage_options=azure.storage_options)] == []  # fmt: skip
    assert "A-1" in acme(db)[0]


def test_a_blob_replaced_by_the_partner_is_read_whole(azure: AzureContainer) -> None:
    put(azure, "inbox/a.xml", b"<short/>")
    assert names(azure, "inbox") == ["a.xml"]  # an earlier look, as in an interactive session
    longer = b"<longer>" + b"x" * 5000 + b"</longer>"
    with azure.server.client() as partner:  # another client, as the partner's upload would be
        partner.get_blob_client(azure.name, "inbox/a.xml").upload_blob(longer, overwrite=True)

    [file] = list_files(azure.url("inbox"), "*.xml", storage_options=azure.storage_options)
    assert file.size == len(longer)
    assert file.read() == longer


def test_a_read_only_sas_judges_min_age_by_our_clock_instead_of_failing(
    azure: AzureContainer,
) -> None:
    put(azure, "inbox/a.xml", b"<x/>")
    sas = generate_container_sas(
        ACCOUNT,
        azure.name,
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, list=True),  # no write for the clock probe
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    options = {
        "connection_string": f"BlobEndpoint={azure.server.endpoint_url};SharedAccessSignature={sas}"
    }

    listing = list_files(azure.url("inbox"), "*.xml", storage_options=options, min_age=60)

    assert listing == []
    assert [(s.name, s.reason) for s in listing.skipped] == [
        ("a.xml", "younger than min_age=60s by the source's clock")
    ]
    assert [f.name for f in list_files(azure.url("inbox"), "*.xml", storage_options=options)] == [
        "a.xml"
    ]


def test_code_given_no_storage_options_still_reaches_the_local_server(
    azure: AzureContainer,
) -> None:
    put(azure, "inbox/a.xml", b"<x/>")
    # a notebook kernel started by a test inherits this environment, not the fixture's options
    fs = fsspec.filesystem("az", skip_instance_cache=True)
    assert fs.cat_file(azure.path("inbox/a.xml")) == b"<x/>"
