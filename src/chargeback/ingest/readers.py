"""Landed files into the warehouse: each file streams into a temporary table with ``COPY``.

JSON Lines arrive one text column per line; CSV arrives cell by cell under its header.
A file COPY cannot read at all (not UTF-8, a NUL byte, a wrong header, broken quoting) is
a :class:`FileOutcome`: rejected whole, with the line and reason for the quarantine. A CSV
file with a ragged line falls back to Python's csv module so only the bad lines are
quarantined. Classification of the rows is :mod:`chargeback.ingest.classify`'s job.
"""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass

import psycopg

from chargeback.ingest.layout import SNAPSHOT_FIELDS
from chargeback.ingest.sources import SnapshotFile

_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileOutcome:
    """A landed file the parse could not read at all: rejected whole (1-based ``line``, if known)."""

    line: int | None
    reason: str
    rows_in: int


class _Counting:
    """Wrap a binary stream, counting the bytes COPY reads (``pipeline.load_files.bytes``)."""

    def __init__(self, fh):
        self.fh = fh
        self.bytes = 0

    def read(self, n: int) -> bytes:
        chunk = self.fh.read(n)
        self.bytes += len(chunk)
        return chunk


def copy_jsonl(conn: psycopg.Connection, f: SnapshotFile) -> tuple[int, FileOutcome | None]:
    # One text column per line; delimiter and quote are control characters that JSON
    # text never contains raw, so every line arrives verbatim and in order.
    with f.open() as raw:
        fh = _Counting(raw)
        try:
            with conn.transaction():
                conn.execute("truncate landed_jsonl restart identity")
                with conn.cursor().copy(
                    "copy landed_jsonl (doc) from stdin with (format csv, delimiter e'\\x1f', quote e'\\x1e')"
                ) as copy:
                    while chunk := fh.read(_CHUNK):
                        copy.write(chunk)
        except psycopg.errors.DataError as exc:
            return fh.bytes, _unreadable(f, exc, fh, header=False)
    return fh.bytes, None


def copy_csv(conn: psycopg.Connection, f: SnapshotFile) -> tuple[int, FileOutcome | None]:
    with f.open() as raw:
        fh = _Counting(raw)
        header_bytes = fh.fh.readline()
        fh.bytes += len(header_bytes)
        try:
            header_line = codecs.decode(header_bytes, "utf-8-sig")
        except UnicodeDecodeError:
            return fh.bytes + _drain(fh), FileOutcome(1, "file: header is not UTF-8 text", _drain_rows(f) - 1)
        header = [c.strip() for c in next(csv.reader([header_line]), [])]
        missing = [c for c in SNAPSHOT_FIELDS if c not in header]
        unknown = [c for c in header if c not in SNAPSHOT_FIELDS]
        if missing or unknown:
            detail = "; ".join(
                part for part in (
                    f"missing column(s) {', '.join(missing)}" if missing else "",
                    f"unknown column(s) {', '.join(unknown)}" if unknown else "",
                ) if part
            )
            reason = f"header: {detail} (expected {', '.join(SNAPSHOT_FIELDS)})"
            return fh.bytes + _drain(fh), FileOutcome(1, f"file: {reason}", max(_drain_rows(f) - 1, 0))
        try:
            with conn.transaction():
                conn.execute("truncate landed_csv restart identity")
                with conn.cursor().copy(f"copy landed_csv ({', '.join(header)}) from stdin with (format csv)") as copy:
                    # COPY reads a blank line as a row with missing columns: hold back trailing
                    # blank lines (an editor's or a producer's last newlines) and drop them at the end.
                    pending, wrote = b"", False
                    while chunk := fh.read(_CHUNK):
                        data = pending + chunk
                        kept = data.rstrip(b" \t\r\n")
                        pending = data[len(kept):]
                        if kept:
                            copy.write(kept)
                            wrote = True
                    if wrote:
                        copy.write(b"\n")
        except (psycopg.errors.CharacterNotInRepertoire, psycopg.errors.UntranslatableCharacter) as exc:
            return fh.bytes, _unreadable(f, exc, fh, header=True)
        except psycopg.errors.DataError:
            _drain(fh)
            return fh.bytes, _copy_csv_loose(conn, f, header)
    return fh.bytes, None


def _copy_csv_loose(conn: psycopg.Connection, f: SnapshotFile, header: list[str]) -> FileOutcome | None:
    """COPY refused a line (too many or too few cells, a blank line): tokenize the file with
    Python's csv module instead, so that only the bad lines are quarantined.

    Only this fallback reads rows in Python (to split them into cells); they still reach
    PostgreSQL through COPY and are classified by the same set-based statement.
    """
    with f.open() as fh:
        data = fh.read()
    rows_in = max(sum(1 for line in data.splitlines() if line.strip()) - 1, 0)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return FileOutcome(None, f"file: cannot be parsed: not UTF-8 text ({exc.reason} at byte {exc.start})",
                            rows_in)
    reader = csv.reader(io.StringIO(text, newline=""))
    records = []
    try:
        next(reader, None)
        previous = reader.line_num
        for cells in reader:
            line, previous = previous + 1, reader.line_num
            if not any(c.strip() for c in cells):
                continue  # a blank line is not a row
            raw = ",".join(cells)
            if len(cells) != len(header):
                problem = f"record: {len(cells)} cell(s), expected {len(header)} ({','.join(header)})"
                records.append((line - 1, *([None] * len(SNAPSHOT_FIELDS)), problem, raw))
            else:
                by_name = dict(zip(header, cells, strict=True))
                records.append((line - 1, *(by_name[c] for c in SNAPSHOT_FIELDS), None, raw))
    except csv.Error as exc:
        return FileOutcome(reader.line_num, f"file: cannot be parsed: {exc}", rows_in)
    conn.execute("truncate landed_csv restart identity")
    columns = ", ".join(("line", *SNAPSHOT_FIELDS, "problem", "raw"))
    with conn.cursor().copy(f"copy landed_csv ({columns}) from stdin") as copy:
        for record in records:
            copy.write_row(record)
    return None


def _drain(fh: _Counting) -> int:
    while fh.read(_CHUNK):
        pass
    return 0


def _drain_rows(f: SnapshotFile) -> int:
    """Non-blank lines of a file that will not be parsed (its rows, for the accounting)."""
    with f.open() as fh:
        return sum(1 for line in fh if line.strip())


def _unreadable(f: SnapshotFile, exc: psycopg.Error, fh: _Counting, *, header: bool) -> FileOutcome:
    """COPY refused the file (not UTF-8, a NUL byte, broken CSV quoting): reject it whole."""
    _drain(fh)
    line = _copy_error_line(exc)
    if line is not None and header:
        line += 1
    why = " ".join((exc.diag.message_primary or str(exc)).split())
    if isinstance(exc, psycopg.errors.CharacterNotInRepertoire | psycopg.errors.UntranslatableCharacter):
        why = f"not UTF-8 text ({why})"
    rows = _drain_rows(f) - (1 if header else 0)
    return FileOutcome(line, f"file: cannot be parsed: {why}", max(rows, 0))


def _copy_error_line(exc: psycopg.Error) -> int | None:
    context = exc.diag.context or ""
    marker = ", line "
    if marker in context:
        digits = context.split(marker, 1)[1].split(":", 1)[0].split(",", 1)[0].strip()
        return int(digits) if digits.isdigit() else None
    return None
