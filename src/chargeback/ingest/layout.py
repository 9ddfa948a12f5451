"""The landing contract every producer and the simulator share: the snapshot fields,
the file formats and the folders per hour::

    <landing>/usage/<tenant>/<YYYY-MM-DD>/<HH>/<name>   a tenant's own producers
    <landing>/usage/<YYYY-MM-DD>/<HH>/<name>            trusted platform producers (shared)

A file under a tenant's prefix may only carry that tenant's snapshots: the prefix is the
producer's identity (grant each tenant's producers write access to their prefix only).
The shared folders are for the platform's own producers (``settings.trusted_producers``).

Names: ``.jsonl`` (also ``.ndjson`` and ``.json``, read as JSON Lines) or ``.csv``, in any
letter case, optionally gzip-compressed (``.gz``). Any other file is rejected with a reason.

Kept apart from :mod:`chargeback.ingest.sources` so that the simulator, which writes
this layout, and the sources, which read it, both depend on it and not on each other.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass

SNAPSHOT_FIELDS = ("snapshot_id", "tenant_id", "meter", "value", "unit", "hour", "emitted_at", "kind")
ATTRIBUTION_FIELDS = ("source", "labels")
"""Optional fields (docs/SNAPSHOTS.md): who inside the tenant produced the usage. Absent: source
``(none)``, no labels."""
NO_SOURCE = "(none)"
MAX_SOURCE_CHARS = 256
MAX_LABELS = 16
MAX_LABEL_KEY_CHARS = 64
MAX_LABEL_VALUE_CHARS = 256
"""The attribution limits: a longer source, key or value, or more labels, is quarantined."""

# Refused in a source, a label key or value: control characters (C0, DEL, C1) and the invisible
# formatting ones that make a name read as another on an invoice or a screen (zero-width
# characters, bidirectional embeddings, overrides and isolates, word joiners, the BOM).
UNPRINTABLE_RANGES = ((0x01, 0x1F), (0x7F, 0x9F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x2064),
                      (0x2066, 0x2069), (0xFEFF, 0xFEFF))
UNPRINTABLE_CLASS = "[" + "".join(f"\\u{a:04x}-\\u{b:04x}" for a, b in UNPRINTABLE_RANGES) + "]"
"""The ranges as a regular-expression class (Python and PostgreSQL alike read ``\\uXXXX``)."""


def unprintable(text: str) -> bool:
    """Whether ``text`` holds a character of :data:`UNPRINTABLE_RANGES`."""
    return any(a <= ord(c) <= b for c in text for a, b in UNPRINTABLE_RANGES)


FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
COMPRESSIONS = {".gz": "gzip"}
DATE_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")
"""A folder under ``usage/`` with this name is a shared day folder; any other is a tenant's prefix."""


@dataclass(frozen=True)
class FileKind:
    """What a landed file's name says it is: its format and compression, or why it is refused."""

    format: str | None
    compression: str | None = None
    refusal: str | None = None


def file_kind(name: str) -> FileKind:
    """Read a file name's extensions (case-insensitive): ``x.jsonl.gz`` -> jsonl, gzip."""
    lowered = name.rsplit("/", 1)[-1].lower()
    compression = None
    for suffix, codec in COMPRESSIONS.items():
        if lowered.endswith(suffix):
            compression, lowered = codec, lowered.removesuffix(suffix)
    for suffix, fmt in FORMATS.items():
        if lowered.endswith(suffix):
            return FileKind(fmt, compression)
    expected = ", ".join(sorted(FORMATS)) + " (optionally .gz)"
    shown = "." + lowered.rsplit(".", 1)[-1] if "." in lowered else "no extension"
    return FileKind(None, compression, f"file: not a snapshot file type ({shown}); expected {expected}")


def hours(start: dt.datetime, end: dt.datetime) -> Iterator[dt.datetime]:
    """Each hour start in ``[start, end)``; both ends must be whole UTC hours."""
    for bound in (start, end):
        if bound.tzinfo is None or bound.minute or bound.second or bound.microsecond:
            raise ValueError(f"window bounds must be whole hours with a time zone, got {bound.isoformat()}")
    hour = start.astimezone(dt.UTC)
    while hour < end:
        yield hour
        hour += dt.timedelta(hours=1)


def hour_folder(landing: str, hour: dt.datetime, tenant: str | None = None) -> str:
    """The folder of ``hour``: a tenant's own (``tenant``) or the shared one."""
    prefix = f"{landing.rstrip('/')}/usage" + (f"/{tenant}" if tenant else "")
    return f"{prefix}/{hour:%Y-%m-%d}/{hour:%H}"
