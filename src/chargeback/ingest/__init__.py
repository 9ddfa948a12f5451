"""Extract, load, gate: landed snapshot files (or the simulator) -> COPY -> classified rows
(loaded, duplicate, quarantined) -> Great Expectations gate -> published raw usage.
Late files restate past hours; quarantined rows can be replayed."""
