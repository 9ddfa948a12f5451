"""Where hourly usage snapshots come from, behind one small interface.

A source lists the snapshot files that cover a window of hours. Files live in a
landing location — a local directory or any fsspec URL (``s3://…``, ``gs://…``,
``memory://…``) — laid out one folder per hour::

    <landing>/usage/<YYYY-MM-DD>/<HH>/<name>.jsonl | .csv

``FileSource`` reads what producers dropped there. ``SimulatorSource`` first writes
seeded synthetic files for the window into the same layout, then reads them like any
other files, so the demo and the benchmarks exercise the real loading path.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

import fsspec

from chargeback.ingest.layout import FORMATS, hour_folder, hours
from chargeback.ingest.simulate import simulate


@dataclass(frozen=True)
class SnapshotFile:
    """One landed file: its URL (as written in error messages and lineage) and format."""

    url: str
    format: str  # "jsonl" | "csv"
    hour: dt.datetime
    """The landed hour: the hour folder the file sits in (its snapshots' hours may be earlier)."""
    size: int | None = None
    """Bytes when listed; the restatement scan compares it with what a load saw."""

    def open(self):
        return fsspec.open(self.url, "rb").open()


class UsageSource(Protocol):
    name: str

    def files(self, start: dt.datetime, end: dt.datetime) -> list[SnapshotFile]:
        """Snapshot files of every hour in ``[start, end)``, in hour order."""
        ...


class FileSource:
    """Snapshot files that producers landed under ``landing``."""

    name = "files"

    def __init__(self, landing: str):
        self.landing = landing
        self.fs, self.root = fsspec.core.url_to_fs(landing)

    def files(self, start: dt.datetime, end: dt.datetime) -> list[SnapshotFile]:
        found: list[SnapshotFile] = []
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        for hour in hours(start, end):
            folder = hour_folder(self.root, hour)
            if not self.fs.isdir(folder):
                continue
            entries = sorted(self.fs.ls(folder, detail=True), key=lambda e: e["name"])
            for entry in entries:
                path = entry["name"]
                suffix = "." + path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else ""
                if suffix in FORMATS and entry.get("type", "file") == "file":
                    url = path if protocol == "file" else f"{protocol}://{path}"
                    size = entry.get("size")
                    found.append(SnapshotFile(url=url, format=FORMATS[suffix], hour=hour,
                                              size=int(size) if size is not None else None))
        return found


class SimulatorSource(FileSource):
    """Seeded synthetic usage written into ``landing``, then read back as files."""

    name = "simulator"

    def __init__(self, landing: str, tenant_ids: list[str], seed: int = 42):
        super().__init__(landing)
        self.tenant_ids = tenant_ids
        self.seed = seed

    def files(self, start: dt.datetime, end: dt.datetime) -> list[SnapshotFile]:
        simulate(self.landing, self.tenant_ids, start, end, seed=self.seed)
        return super().files(start, end)
