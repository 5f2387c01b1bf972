"""The embedded store's ingest log: acknowledged batches that are not yet in the database.

Why: a DuckDB transaction has a fixed cost of tens of milliseconds (statement planning for
the five raw tables, the write-ahead log, checkpoints), so committing every group of batches
to the database before acknowledging it made the store writer the bottleneck of ingest. Now
the writer appends each group's request bodies to this log and fsyncs it (one small
sequential write), acknowledges the group, and moves what the log holds into the database in
one transaction a few times a second. An acknowledged batch is always on disk: in this log
until its transaction commits, in the database after; the log is emptied only after that
commit. At start-up, whatever a crash left in the log is moved into the database first (the
batch ids make that idempotent, so a batch both committed and still in the log is stored
once).

File format: ``<generation>.log`` files in the log folder, each a run of records ``<u32 length>
<u32 crc32> payload``, the payload being ``<JSON of token name, received_at, clock skew>\\n<the
batch as JSON>``. Only batches validated before they were logged are ever written here (by the
store's writer, or an ingest worker's), so a record is read back with ``wire.trusted_batch``
(the same models, without validating again). A torn last record (a crash mid-write, never acknowledged) fails its CRC and
is dropped; an unreadable record elsewhere is kept aside in ``*.unreadable`` for a human.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import orjson

from gpufleet.store.base import IngestItem
from gpufleet.wire import trusted_batch

log = logging.getLogger("gpufleet.store.ingestlog")

_HEAD = struct.Struct("<II")


def encode(item: IngestItem) -> bytes:
    meta = orjson.dumps([item.token_name, item.received_at, item.clock_skew_seconds])
    body = item.raw if item.raw is not None else item.batch.model_dump_json().encode()
    payload = meta + b"\n" + body
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def decode(payload: bytes) -> IngestItem:
    meta, _, body = payload.partition(b"\n")
    token_name, received_at, skew = orjson.loads(meta)
    return IngestItem(trusted_batch(body), token_name, received_at, skew, body)


class IngestLog:
    """Append-only and fsync'd; owned by the store's writer thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.leftovers = sorted(folder.glob("*.log"))  # what a previous run did not apply
        last = max((int(p.stem) for p in self.leftovers if p.stem.isdigit()), default=0)
        self._generation = last
        self._file = self._open_next()
        self.records = 0  # in the current file

    def _open_next(self):
        self._generation += 1
        path = self.folder / f"{self._generation:012d}.log"
        f = open(path, "ab", buffering=0)  # noqa: SIM115 - kept open for appends
        _fsync_dir(self.folder)
        return f

    def append(self, records: list[bytes]) -> None:
        """Write records and make them durable (raises OSError: then nothing is acknowledged)."""
        self._file.write(b"".join(records))
        os.fsync(self._file.fileno())
        self.records += len(records)

    def rotate(self) -> Path | None:
        """Start a new file for what comes next; the old one (None if it was empty) is deleted
        by the caller once its batches are committed to the database."""
        if self.records == 0:
            return None
        old = Path(self._file.name)
        self._file.close()
        self._file = self._open_next()
        self.records = 0
        return old

    def restart(self) -> None:
        """Go on in a new file after a failed append: the old one may end in a torn record,
        and a reader stops at the first one."""
        self._file.close()
        self._file = self._open_next()
        self.records = 0

    def drop_leftovers(self) -> None:
        for path in self.leftovers:
            path.unlink(missing_ok=True)
        self.leftovers = []

    def close(self) -> None:
        path = Path(self._file.name)
        self._file.close()
        if self.records == 0:
            path.unlink(missing_ok=True)


def complete_records(data: bytes, start: int = 0) -> tuple[list[bytes], int]:
    """The payloads of the whole, intact records in ``data`` from ``start`` on, and the offset
    just past the last of them. For a log another process is still appending to, what
    follows that offset is a record being written; in a finished log, a torn one."""
    payloads, at = [], start
    while at + _HEAD.size <= len(data):
        size, crc = _HEAD.unpack_from(data, at)
        end = at + _HEAD.size + size
        if end > len(data) or zlib.crc32(data[at + _HEAD.size : end]) != crc:
            break
        payloads.append(data[at + _HEAD.size : end])
        at = end
    return payloads, at


def decode_records(path: Path, payloads: list[bytes]) -> list[IngestItem]:
    """Decoded records of ``path``; one that does not parse is kept aside in
    ``*.unreadable`` for a human (an error says so) and the rest go on."""
    items = []
    for payload in payloads:
        try:
            items.append(decode(payload))
        except ValueError as exc:
            aside = path.with_suffix(".unreadable")
            with open(aside, "ab") as f:
                f.write(_HEAD.pack(len(payload), zlib.crc32(payload)) + payload)
            log.error("ingest log %s: a record does not parse (%s); kept in %s", path, exc, aside)
    return items


def read_records(path: Path) -> list[IngestItem]:
    """The items in one finished log file, in order; a torn tail is dropped (it was being
    written during a crash, so never acknowledged), a bad record set aside."""
    data = path.read_bytes()
    payloads, at = complete_records(data)
    if at < len(data):
        log.warning(
            "ingest log %s: dropped a torn record at byte %d (%d bytes; written during a "
            "crash, never acknowledged)", path, at, len(data) - at,
        )  # fmt: skip
    return decode_records(path, payloads)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
