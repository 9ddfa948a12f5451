"""What a load did, for the one summary a person reads (``chargeback load``): its accounting
(rows in = loaded + duplicates + quarantined), the producers the policy held back and the CSV
columns the loader did not read."""

from __future__ import annotations

from dataclasses import dataclass

from chargeback.platform import warehouse
from chargeback.platform.settings import Settings


@dataclass(frozen=True)
class LoadOutcome:
    """What a load did, for the one summary a person reads (``chargeback load``)."""

    load_id: int
    status: str
    rows_in: int
    rows_loaded: int
    rows_duplicate: int
    rows_quarantined: int
    files_rejected: int
    held: tuple[str, ...]
    """Producers the gate's policy held back (``tenant t007``, ``file …``)."""
    ignored_columns: tuple[str, ...]
    """Per CSV file with columns the loader does not read: ``<file>: ignored unknown column(s): …``."""

    def lines(self) -> list[str]:
        out = [f"load {self.load_id} {self.status}: {self.rows_in:,} row(s) in, {self.rows_loaded:,} loaded,"
               f" {self.rows_duplicate:,} duplicate(s), {self.rows_quarantined:,} quarantined,"
               f" {self.files_rejected:,} file(s) rejected"]
        out += [f"held back: {who} (chargeback quarantine replay --load {self.load_id} once fixed)"
                for who in self.held]
        out += list(self.ignored_columns)
        return out


def outcome(load_id: int, settings: Settings | None = None) -> LoadOutcome:
    with warehouse.connect(settings) as conn:
        run = conn.execute("select status, rows_in, rows_loaded, rows_duplicate, rows_quarantined, files_rejected"
                           " from pipeline.load_runs where load_id = %s", (load_id,)).fetchone()
        held = [f"{kind} {holder}" for holder, kind in conn.execute(
            "select holder, holder_kind from pipeline.load_holds where load_id = %s"
            " order by holder_kind desc, holder", (load_id,))]
        ignored = [f"{url}: {message}" for url, message in conn.execute(
            "select file_url, message from pipeline.load_files where load_id = %s and status = 'loaded'"
            " and message like 'ignored unknown column(s)%%' order by file_url", (load_id,))]
    return LoadOutcome(load_id, *run, tuple(held), tuple(ignored))
