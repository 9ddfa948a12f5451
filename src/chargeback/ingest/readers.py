"""Landed files into the warehouse: each file streams into a temporary table with ``COPY``.

Every file is read as a stream, never whole: decompressed on the fly (gzip), its byte
order mark dropped, and checked line by line on its way to COPY. A line that is not
UTF-8, holds a NUL byte or is longer than ``max_line_bytes`` reaches the table as a
*marked* line (``\\x01reason\\x02raw``) so that the classification quarantines it alone
and the file's good lines load. A file larger than ``max_file_bytes`` (after
decompression), a broken gzip stream or a CSV header that cannot be read is a
:class:`FileOutcome`: rejected whole, with the line and reason for the quarantine.

JSON Lines arrive one text column per line. CSV arrives cell by cell into positional
columns ``c1 … cN``; :class:`CsvHeader` maps them to the snapshot fields, so unknown
columns are simply not read. A CSV file COPY refuses (a ragged line, a blank line,
mixed newlines) is tokenized again with Python's csv module, still streaming, so only
its bad lines are quarantined. Classification of the rows is
:mod:`chargeback.ingest.classify`'s job.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg

from chargeback.ingest.layout import ATTRIBUTION_FIELDS, SNAPSHOT_FIELDS
from chargeback.ingest.sources import SnapshotFile
from chargeback.platform import events

_CHUNK = 1 << 20
MAX_CSV_COLUMNS = 64
MARK, MARK_END = "\x01", "\x02"
"""A line the reader could not pass on reaches the table as ``MARK reason MARK_END raw``."""
_SHOWN = 200
"""Bytes of an unreadable line kept (escaped) as its raw record."""


@dataclass(frozen=True)
class FileOutcome:
    """A landed file the parse could not read at all: rejected whole (1-based ``line``, if known)."""

    line: int | None
    reason: str
    rows_in: int


@dataclass(frozen=True)
class CsvHeader:
    """A CSV file's header: the position (1-based) of each snapshot field, the columns ignored."""

    names: tuple[str, ...]
    positions: tuple[int, ...]
    """Position of each of ``SNAPSHOT_FIELDS``, in that order."""
    ignored: tuple[str, ...] = ()
    optional: tuple[int | None, ...] = (None,) * len(ATTRIBUTION_FIELDS)
    """Position of each of ``ATTRIBUTION_FIELDS`` (``source``, ``labels``), ``None`` when absent."""

    @property
    def width(self) -> int:
        return len(self.names)


class _Unreadable(Exception):
    """The stream cannot be read on (too large, broken compression): reject the file.
    ``countable``: its lines may be counted (rows in); a file too large is not read again."""

    def __init__(self, reason: str, *, countable: bool = True):
        super().__init__(reason)
        self.countable = countable

    def outcome(self, f: SnapshotFile, max_file: int) -> FileOutcome:
        return FileOutcome(None, str(self), count_lines(f, max_file) if self.countable else 0)


class StorageError(Exception):
    """Reading the landing storage failed (not the file's content): the load fails and is
    retried, rather than rejecting a file that may be fine. Not an ``OSError``, so that the
    gzip reader's error handling cannot mistake it for a broken stream."""


class _StoredBytes(io.RawIOBase):
    """The file's bytes as read from storage, counted into ``stream.stored``; a storage error
    is a :class:`StorageError` (not an ``OSError``, which gzip would take for a broken stream)."""

    def __init__(self, stream: _Stream, url: str):
        self.stream, self.url = stream, url

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            data = self.stream.raw.read(len(b))
        except OSError as exc:
            raise StorageError(f"cannot read {self.url}: {exc}") from exc
        self.stream.stored += len(data)
        b[:len(data)] = data
        return len(data)


class _Stream:
    """The file's bytes as its producer wrote them: decompressed, without a byte order
    mark, at most ``limit`` bytes; ``stored`` counts the bytes read from storage."""

    def __init__(self, f: SnapshotFile, limit: int):
        self.raw = f.open()
        self.stored = 0
        self.limit, self.read_bytes = limit, 0
        counted = io.BufferedReader(_StoredBytes(self, f.url), _CHUNK)
        self.gzip = f.compression == "gzip"
        self.fh = gzip.GzipFile(fileobj=counted, mode="rb") if self.gzip else counted
        self.first = True

    def _read(self, n: int) -> bytes:
        if not self.gzip:
            return self.fh.read(n)
        try:
            return self.fh.read(n)
        except (OSError, EOFError, zlib.error) as exc:  # the decompressor's, not storage's
            raise _Unreadable(f"file: not a readable gzip stream ({exc})") from exc

    def read(self, n: int = _CHUNK) -> bytes:
        chunk = self._read(n)
        if self.first:
            self.first = False
            while len(chunk) < len(codecs.BOM_UTF8) and (more := self._read(n)):
                chunk += more
            chunk = chunk.removeprefix(codecs.BOM_UTF8)
        self.read_bytes += len(chunk)
        if self.read_bytes > self.limit:
            raise _Unreadable(f"file: larger than {self.limit:,} bytes (max_file_bytes); not read", countable=False)
        return chunk

    def readline(self, limit: int) -> bytes:
        """The first line (at most ``limit`` bytes), for a CSV header."""
        head = b""
        while b"\n" not in head and len(head) <= limit and (chunk := self.read(4096)):
            head += chunk
        line, _, rest = head.partition(b"\n")
        self._rest = rest
        return line.removesuffix(b"\r")

    def close(self) -> None:
        self.raw.close()


class _Rest:
    """Bytes already read past the CSV header, then the rest of the stream."""

    def __init__(self, stream: _Stream):
        self.stream, self.pending = stream, getattr(stream, "_rest", b"")

    def read(self, n: int = _CHUNK) -> bytes:
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        return self.stream.read(n)


def _escaped(raw: bytes) -> str:
    """Printable text of an unreadable line (its first bytes): invalid bytes and control
    characters escaped as ``\\xNN`` by the one escaping rule, :func:`events.clean`."""
    return events.clean(raw[:_SHOWN + 1].decode("utf-8", "backslashreplace"), _SHOWN)


def _line_problem(line: bytes, max_line: int, forbidden: bytes) -> str | None:
    if len(line) > max_line:
        return f"line longer than {max_line:,} bytes (max_line_bytes)"
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
    for byte in forbidden:
        at = line.find(bytes([byte]))
        if at >= 0:
            what = "a NUL byte" if byte == 0 else f"control character 0x{byte:02x}"
            return f"{what} at column {at + 1}"
    return None


def checked_lines(stream, max_line: int, mark: Callable[[str, bytes], bytes],
                  forbidden: bytes = b"\x00\x01\x02") -> Iterator[bytes]:
    """The stream in blocks of whole lines, each bad line replaced by ``mark(reason, raw)``.

    Blocks that decode and hold no ``forbidden`` byte pass as they are (the fast path);
    an over-long line is skipped to its end without being held in memory.
    """
    pending, skipping = b"", None
    while chunk := stream.read(_CHUNK):
        if skipping is not None:
            end = chunk.find(b"\n")
            if end < 0:
                continue
            yield mark(f"line longer than {max_line:,} bytes (max_line_bytes)", skipping)
            skipping, chunk = None, chunk[end + 1:]
        data = pending + chunk
        if b"\r\n" in data:  # a CRLF file: the line ends are the same lines
            data = data.replace(b"\r\n", b"\n")
        cut = data.rfind(b"\n") + 1
        block, pending = data[:cut], data[cut:]
        if len(pending) > max_line:
            skipping, pending = pending[:_SHOWN + 1], b""
        if block:
            yield _checked_block(block, max_line, mark, forbidden)
    if skipping is not None:
        yield mark(f"line longer than {max_line:,} bytes (max_line_bytes)", skipping)
    elif pending:
        yield _checked_block(pending + b"\n", max_line, mark, forbidden)


def _checked_block(block: bytes, max_line: int, mark: Callable[[str, bytes], bytes], forbidden: bytes) -> bytes:
    try:
        block.decode("utf-8")
        clean = not any(bytes([b]) in block for b in forbidden) and (
            len(block) <= max_line or max(map(len, block.split(b"\n"))) <= max_line)
    except UnicodeDecodeError:
        clean = False
    if clean:
        return block
    out = []
    for line in block[:-1].split(b"\n"):
        problem = _line_problem(line, max_line, forbidden)
        out.append(mark(problem, line) if problem else line + b"\n")
    return b"".join(out)


def _marked(reason: str, raw: bytes) -> str:
    return f"{MARK}record: {reason}{MARK_END}{_escaped(raw)}"


def _jsonl_mark(reason: str, raw: bytes) -> bytes:
    return _marked(reason, raw).encode() + b"\n"


def copy_jsonl(conn: psycopg.Connection, f: SnapshotFile, max_file: int, max_line: int
               ) -> tuple[int, FileOutcome | None]:
    """COPY a JSON Lines file into ``landed_jsonl``, one row per line; (stored bytes, rejection)."""
    # One text column per line; delimiter and quote are control characters that the
    # checked lines never contain raw (nor a CR), so every line arrives verbatim and in order.
    stream = _Stream(f, max_file)
    try:
        with conn.transaction():
            conn.execute("truncate landed_jsonl restart identity")
            with conn.cursor().copy(
                "copy landed_jsonl (doc) from stdin with (format csv, delimiter e'\\x1f', quote e'\\x1e')"
            ) as copy:
                for block in checked_lines(stream, max_line, _jsonl_mark, b"\x00\x01\x02\x1e\x1f\r"):
                    copy.write(block)
    except _Unreadable as exc:
        return _stored(f, stream), exc.outcome(f, max_file)
    except psycopg.errors.DataError as exc:
        return _stored(f, stream), _copy_refused(f, exc, max_file, header=False)
    finally:
        stream.close()
    return _stored(f, stream), None


def read_csv_header(f: SnapshotFile, stream: _Stream, max_line: int, max_file: int
                    ) -> CsvHeader | FileOutcome:
    """The header of a CSV file, or why the file is rejected whole."""
    line = stream.readline(max_line)
    if len(line) > max_line:
        return FileOutcome(1, f"file: header longer than {max_line:,} bytes (max_line_bytes)",
                           max(count_lines(f, max_file) - 1, 0))
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return FileOutcome(1, "file: header is not UTF-8 text", count_lines(f, max_file))
    if "\x00" in text:
        return FileOutcome(1, "file: header holds a NUL byte", count_lines(f, max_file))
    try:
        header = [c.strip() for c in next(csv.reader([text]), [])]
    except csv.Error as exc:
        return FileOutcome(1, f"file: header cannot be parsed: {exc}", count_lines(f, max_file))
    known = [c for c in header if c in SNAPSHOT_FIELDS]
    if not known:
        # The first line names none of the columns: a file without a header, every line a row.
        return FileOutcome(1, f"file: no header (the first line names none of {', '.join(SNAPSHOT_FIELDS)});"
                              " a CSV file starts with a header", count_lines(f, max_file))
    # The first line names snapshot fields: it is a header, and every later line a row.
    def reject(reason: str) -> FileOutcome:
        return FileOutcome(1, f"file: {reason}", max(count_lines(f, max_file) - 1, 0))

    if len(header) > MAX_CSV_COLUMNS:
        return reject(f"header has {len(header)} columns; at most {MAX_CSV_COLUMNS}")
    repeated = sorted({c for c in header if c and header.count(c) > 1})
    if repeated:
        where = "; ".join(
            f"{c!r} in columns {', '.join(str(i + 1) for i, h in enumerate(header) if h == c)}" for c in repeated)
        return reject(f"header repeats column(s): {where}")
    missing = [c for c in SNAPSHOT_FIELDS if c not in header]
    if missing:
        return reject(f"header: missing column(s) {', '.join(missing)} (expected {', '.join(SNAPSHOT_FIELDS)})")
    read = (*SNAPSHOT_FIELDS, *ATTRIBUTION_FIELDS)
    return CsvHeader(tuple(header), tuple(header.index(c) + 1 for c in SNAPSHOT_FIELDS),
                     tuple(c or f"(column {i + 1})" for i, c in enumerate(header) if c not in read),
                     tuple(header.index(c) + 1 if c in header else None for c in ATTRIBUTION_FIELDS))


def copy_csv(conn: psycopg.Connection, f: SnapshotFile, max_file: int, max_line: int
             ) -> tuple[int, CsvHeader | None, FileOutcome | None]:
    """COPY a CSV file into ``landed_csv`` (``c1 … cN`` as the header orders them)."""
    stream = _Stream(f, max_file)
    try:
        header = read_csv_header(f, stream, max_line, max_file)
        if isinstance(header, FileOutcome):
            _drain(stream)
            return _stored(f, stream), None, header
        columns = ", ".join(f"c{i}" for i in range(1, header.width + 1))

        def mark(reason: str, raw: bytes) -> bytes:
            cell = _marked(reason, raw).replace('"', '""')
            return f'"{cell}"'.encode() + b"," * (header.width - 1) + b"\n"

        try:
            with conn.transaction():
                conn.execute("truncate landed_csv restart identity")
                with conn.cursor().copy(f"copy landed_csv ({columns}) from stdin with (format csv)") as copy:
                    # COPY reads a blank line as a row with missing columns: hold back trailing
                    # blank lines (an editor's or a producer's last newlines) and drop them at the end.
                    pending, wrote = b"", False
                    for block in checked_lines(_Rest(stream), max_line, mark):
                        data = pending + block
                        kept = data.rstrip(b" \t\r\n")
                        pending = data[len(kept):]
                        if kept:
                            copy.write(kept)
                            wrote = True
                    if wrote:
                        copy.write(b"\n")
        except psycopg.errors.DataError:
            _drain(stream)
            return _stored(f, stream), header, _copy_csv_loose(conn, f, header, max_file, max_line, mark)
    except _Unreadable as exc:
        return _stored(f, stream), None, exc.outcome(f, max_file)
    finally:
        stream.close()
    return _stored(f, stream), header, None


def _copy_csv_loose(conn: psycopg.Connection, f: SnapshotFile, header: CsvHeader, max_file: int, max_line: int,
                    mark: Callable[[str, bytes], bytes]) -> FileOutcome | None:
    """COPY refused a line (too many or too few cells, a blank line): tokenize the file with
    Python's csv module instead, still as a stream, so that only the bad lines are quarantined.

    Only this fallback reads rows in Python (to split them into cells); they still reach
    PostgreSQL through COPY and are classified by the same set-based statement.
    """
    stream = _Stream(f, max_file)
    columns = ", ".join(("line", *(f"c{i}" for i in range(1, header.width + 1)), "problem", "raw"))
    try:
        with conn.transaction():
            conn.execute("truncate landed_csv restart identity")
            with conn.cursor().copy(f"copy landed_csv ({columns}) from stdin") as copy:
                for record in _loose_records(stream, header, max_line, mark):
                    copy.write_row(record)
    except _Unreadable as exc:
        return exc.outcome(f, max_file)
    except csv.Error as exc:
        return FileOutcome(None, f"file: cannot be parsed: {exc}", max(count_lines(f, max_file) - 1, 0))
    finally:
        stream.close()
    return None


def _loose_records(stream: _Stream, header: CsvHeader, max_line: int,
                   mark: Callable[[str, bytes], bytes]) -> Iterator[tuple]:
    stream.readline(max_line)

    def lines() -> Iterator[str]:
        for block in checked_lines(_Rest(stream), max_line, mark):
            text = block.decode("utf-8")
            yield from (line + "\n" for line in text[:-1].split("\n"))

    reader = csv.reader(lines())
    previous = reader.line_num
    for cells in reader:
        line, previous = previous + 1, reader.line_num
        if not any(c.strip() for c in cells):
            continue  # a blank line is not a row
        raw = ",".join(cells)
        empty = [None] * header.width
        if cells and cells[0].startswith(MARK):
            problem, _, raw = cells[0][1:].partition(MARK_END)
            yield (line, *empty, problem, raw)
        elif len(cells) != header.width:
            problem = f"record: {len(cells)} cell(s), expected {header.width} ({','.join(header.names)})"
            yield (line, *empty, problem, raw)
        else:
            yield (line, *cells, None, raw)


def _drain(stream) -> None:
    while stream.read(_CHUNK):
        pass


def _stored(f: SnapshotFile, stream: _Stream) -> int:
    """The file's size in storage (what a listing shows), as the restatement scan compares it."""
    return f.size if f.size is not None else stream.stored


def count_lines(f: SnapshotFile, max_file: int) -> int:
    """Non-blank lines of a file that will not be parsed (its rows, for the accounting):
    streamed, and only as far as it can be read (within ``max_file`` bytes)."""
    stream = _Stream(f, max_file)
    count, last = 0, b""
    try:
        while chunk := stream.read(_CHUNK):
            data = last + chunk
            parts = data.split(b"\n")
            last = parts.pop()
            count += sum(1 for p in parts if p.strip())
    except _Unreadable:
        pass
    finally:
        stream.close()
    return count + (1 if last.strip() else 0)


def _copy_refused(f: SnapshotFile, exc: psycopg.Error, max_file: int, *, header: bool) -> FileOutcome:
    """COPY refused the file after the checks (it should not): reject it whole, saying why."""
    line = _copy_error_line(exc)
    if line is not None and header:
        line += 1
    why = " ".join((exc.diag.message_primary or str(exc)).split())
    rows = count_lines(f, max_file) - (1 if header else 0)
    return FileOutcome(line, f"file: cannot be parsed: {why}", max(rows, 0))


def _copy_error_line(exc: psycopg.Error) -> int | None:
    context = exc.diag.context or ""
    marker = ", line "
    if marker in context:
        digits = context.split(marker, 1)[1].split(":", 1)[0].split(",", 1)[0].strip()
        return int(digits) if digits.isdigit() else None
    return None
