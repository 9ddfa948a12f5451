"""Where hourly usage snapshots come from, behind one small interface.

A source lists the snapshot files that cover a window of hours. Files live in a
landing location — a local directory or any fsspec URL (``s3://…``, ``gs://…``,
``memory://…``) — laid out one folder per hour, shared or under a tenant's prefix
(:mod:`chargeback.ingest.layout`).

``FileSource`` reads what producers dropped there: every file of an hour folder is
listed, whatever its name — a file that is not a snapshot file type, or a file in a
shared folder from a producer that is not trusted, is listed with its ``refusal`` so
that the load records it as rejected, never skips it. Files are opened through the
source's filesystem by path: a name is never re-parsed as a URL (``a::b.jsonl`` is a
file name, not a chained URL).

``SimulatorSource`` first writes seeded synthetic files for the window into the same
layout, then reads them like any other files, so the demo and the benchmarks exercise
the real loading path.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import fsspec

from chargeback.ingest.layout import DATE_FOLDER, file_kind, hour_folder, hours
from chargeback.ingest.simulate import simulate


@dataclass(frozen=True)
class SnapshotFile:
    """One landed file: its URL (as written in error messages and lineage) and format."""

    url: str
    format: str | None
    """``jsonl`` | ``csv``; ``None`` when the file is refused (``refusal`` says why)."""
    hour: dt.datetime
    """The landed hour: the hour folder the file sits in (its snapshots' hours may be earlier)."""
    size: int | None = None
    """Bytes when listed; the restatement scan compares it with what a load saw."""
    compression: str | None = None
    producer: str | None = None
    """The tenant whose prefix the file is under; ``None`` in a shared folder."""
    refusal: str | None = None
    """Why the file is rejected without being read (``file: …``), or ``None``."""
    fs: Any = field(default=None, compare=False, repr=False)
    """The source's filesystem; the file is opened through it by ``path``, never by ``url``."""
    path: str = ""

    def open(self) -> IO[bytes]:
        """The file's bytes as stored (still compressed): by path, through its filesystem."""
        return self.fs.open(self.path, "rb")


class UsageSource(Protocol):
    name: str

    def files(self, start: dt.datetime, end: dt.datetime) -> list[SnapshotFile]:
        """Snapshot files of every hour in ``[start, end)``, in hour order."""
        ...


class FileSource:
    """Snapshot files that producers landed under ``landing``.

    ``trusted_producers``: file-name patterns (``fnmatch``) allowed in the shared hour
    folders; ``("*",)`` trusts whoever may write there (restrict it with storage permissions).
    """

    name = "files"

    def __init__(self, landing: str, trusted_producers: tuple[str, ...] | None = None):
        self.landing = landing
        self.fs, self.root = fsspec.core.url_to_fs(landing)
        if trusted_producers is None:
            from chargeback.platform.settings import get_settings

            trusted_producers = get_settings().trusted_producers
        self.trusted_producers = trusted_producers

    def _url(self, path: str) -> str:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return path if protocol == "file" else f"{protocol}://{path}"

    def tenant_prefixes(self) -> list[str]:
        """Tenants with a landing prefix of their own (folders under ``usage/`` not named as a day)."""
        usage = f"{self.root.rstrip('/')}/usage"
        if not self.fs.isdir(usage):
            return []
        return sorted(
            name for entry in self.fs.ls(usage, detail=True)
            if entry.get("type") == "directory"
            and not DATE_FOLDER.match(name := entry["name"].rstrip("/").rsplit("/", 1)[-1])
        )

    def _hour_folders(self, producer: str | None, days: list[dt.date]) -> set[str]:
        """The hour folders (``YYYY-MM-DD/HH``) that exist under a producer's days: one listing
        per day, not a probe per hour (a listing is a request on object storage)."""
        present: set[str] = set()
        for day in days:
            folder = hour_folder(self.root, dt.datetime.combine(day, dt.time(), dt.UTC), producer).rsplit("/", 1)[0]
            if self.fs.isdir(folder):
                present.update(f"{day:%Y-%m-%d}/{entry['name'].rstrip('/').rsplit('/', 1)[-1]}"
                               for entry in self.fs.ls(folder, detail=True) if entry.get("type") == "directory")
        return present

    def files(self, start: dt.datetime, end: dt.datetime) -> list[SnapshotFile]:
        found: list[SnapshotFile] = []
        window = list(hours(start, end))
        days = sorted({hour.date() for hour in window})
        producers = [(producer, self._hour_folders(producer, days)) for producer in [None, *self.tenant_prefixes()]]
        for hour in window:
            for producer, present in producers:
                if f"{hour:%Y-%m-%d/%H}" not in present:
                    continue
                folder = hour_folder(self.root, hour, producer)
                for entry in sorted(self.fs.ls(folder, detail=True), key=lambda e: e["name"]):
                    if entry.get("type", "file") == "file":
                        found.append(self._file(entry, hour, producer))
        return found

    def _file(self, entry: dict, hour: dt.datetime, producer: str | None) -> SnapshotFile:
        path = entry["name"]
        name = path.rsplit("/", 1)[-1]
        kind = file_kind(name)
        refusal = kind.refusal
        if refusal is None and producer is None and not any(
            fnmatch.fnmatchcase(name, pattern) for pattern in self.trusted_producers
        ):
            refusal = (f"file: {name!r} is in a shared hour folder, which only trusted platform producers"
                       f" ({', '.join(self.trusted_producers)}) may write; a tenant's producer writes"
                       " under usage/<tenant>/<YYYY-MM-DD>/<HH>/")
        size = entry.get("size")
        return SnapshotFile(url=self._url(path), format=None if refusal else kind.format, hour=hour,
                            size=int(size) if size is not None else None, compression=kind.compression,
                            producer=producer, refusal=refusal, fs=self.fs, path=path)


class SimulatorSource(FileSource):
    """Seeded synthetic usage written into ``landing``, then read back as files."""

    name = "simulator"

    def __init__(self, landing: str, tenant_ids: list[str], seed: int = 42, sources: int = 0):
        super().__init__(landing)
        self.tenant_ids = tenant_ids
        self.seed = seed
        self.sources = sources
        """Sources per tenant (:func:`chargeback.ingest.simulate.simulate`); 0: tenant totals only."""

    def files(self, start: dt.datetime, end: dt.datetime) -> list[SnapshotFile]:
        simulate(self.landing, self.tenant_ids, start, end, seed=self.seed, sources=self.sources)
        return super().files(start, end)
