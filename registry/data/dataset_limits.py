"""How much of a dataset the registry reads: every reader checks these before (or while) it parses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetLimits:
    max_bytes: int = 256 * 1024 * 1024  # of the file as read
    max_rows: int = 5_000_000  # table rows; TXT lines; XML annotations
    max_columns: int = 10_000
    # Parquet pages are compressed: a small file can decode to far more. Its metadata says how much, before decoding.
    max_decoded_bytes: int = 2 * 1024 * 1024 * 1024
    max_xml_depth: int = 64  # element nesting in a detection annotation file
    timeout_seconds: float = 60.0  # per S3 request without progress

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_rows", "max_columns", "max_decoded_bytes", "max_xml_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"DatasetLimits.{name} must be at least 1")
        if not self.timeout_seconds > 0:
            raise ValueError("DatasetLimits.timeout_seconds must be positive")
