"""Listing ready files on any fsspec URL: memory://, credentials from secrets, order, recursion."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import fsspec
import pytest

from toolkit.errors import SecretError
from toolkit.sources import SourceError, list_files, resolve_options


@pytest.fixture
def memory_inbox() -> str:
    url = f"memory://inbox-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("memory")
    for i, name in enumerate(["b.xml", "a.xml", "sub/c.xml", "sub/.d.xml", "e.xml.tmp"]):
        fs.pipe_file(f"{url}/{name}", b"<x/>" * (i + 1))
    return url


def test_memory_source_lists_by_name_and_recursively(memory_inbox: str) -> None:
    flat = list_files(memory_inbox, "*.xml", order="name")
    assert [f.name for f in flat] == ["a.xml", "b.xml"]
    deep = list_files(memory_inbox, "*.xml", recursive=True, order="name")
    assert [f.name for f in deep] == ["a.xml", "b.xml", "sub/c.xml"]
    assert deep[0].read() == b"<x/>" * 2


def test_oldest_first_by_default_and_newest_on_request(tmp_path: os.PathLike[str]) -> None:
    folder = os.fspath(tmp_path)
    for n, name in enumerate(["late.csv", "early.csv", "middle.csv"]):
        path = os.path.join(folder, name)
        with open(path, "w") as fh:
            fh.write("a\n1\n")
        os.utime(path, (1_700_000_000 + {0: 30, 1: 10, 2: 20}[n],) * 2)
    assert [f.name for f in list_files(folder, "*.csv")] == ["early.csv", "middle.csv", "late.csv"]
    newest = list_files(folder, "*.csv", order="newest", limit=1)
    assert [f.name for f in newest] == ["late.csv"]
    assert newest.capped == 2


def test_storage_option_secrets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTNER_SFTP", "s3cr3t")
    assert resolve_options({"username": "acme", "password": "secret:PARTNER_SFTP"}) == {
        "username": "acme",
        "password": "s3cr3t",
    }
    monkeypatch.delenv("PARTNER_SFTP")
    with pytest.raises(SecretError, match="PARTNER_SFTP"):
        resolve_options({"password": "secret:PARTNER_SFTP"})


def test_a_missing_folder_names_the_source_and_the_fix(tmp_path: os.PathLike[str]) -> None:
    missing = os.path.join(os.fspath(tmp_path), "nope")
    with pytest.raises(SourceError, match="the folder does not exist; create it or fix `source`"):
        list_files(missing)


def test_a_ready_file_reads_whole_even_when_it_grew_after_listing(tmp_path: Path) -> None:
    from toolkit.sources import SMALL_FILE

    (tmp_path / "a.xml").write_bytes(b"<a/>")
    (tmp_path / "b.xml").write_bytes(b"x" * 10)
    small, grows = list_files(str(tmp_path), "*.xml", order="name")
    (tmp_path / "b.xml").write_bytes(b"y" * (3 * SMALL_FILE + 5))  # listed at 10 bytes
    assert small.read() == b"<a/>"
    with grows.open() as fh:
        assert fh.read(4) == b"yyyy"
        assert len(fh.read()) == 3 * SMALL_FILE + 1


def test_a_file_deleted_while_the_folder_is_listed_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run completing files while this one lists: they are gone, not a missing folder."""
    for name in ("a.xml", "b.xml", "c.xml"):
        (tmp_path / name).write_bytes(b"<a/>")
    real_scandir = os.scandir

    class OtherRunDeletes:
        """The real listing; once its first entry is out, the other files are deleted."""

        def __init__(self, path: str) -> None:
            self.entries = real_scandir(path)

        def __enter__(self) -> OtherRunDeletes:
            return self

        def __exit__(self, *exc: object) -> None:
            self.entries.close()

        def __iter__(self):  # type: ignore[no-untyped-def]
            for i, entry in enumerate(self.entries):
                yield entry
                if i == 0:
                    for name in os.listdir(path=tmp_path):
                        if name != entry.name:
                            os.remove(tmp_path / name)

    monkeypatch.setattr(os, "scandir", OtherRunDeletes)
    listed = list_files(str(tmp_path), "*.xml")
    assert [f.name for f in listed] == os.listdir(tmp_path)
    assert len(listed) == 1
