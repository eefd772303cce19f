"""The audit log: one JSON line for every accepted or refused mutation, written (and fsynced) before the answer.

- ``audit_record``: one line's content (``AuditRecord``), built from the caller and the outcome, every field bounded.
- ``AuditLog``: where lines go (a size-rotated file by default, or stdout); ``record_refusal`` is what an access
  check calls for a call it refuses before any handler runs.
- ``audit_reader``: reads a log and its rotated files back, oldest first, reporting lines that are not records.
"""

from modelplane.audit.audit_log import AuditLog, AuditLogError, RotatingFile, StdoutLines
from modelplane.audit.audit_record import AuditRecord, Resource, audit_record

__all__ = ["AuditLog", "AuditLogError", "AuditRecord", "Resource", "RotatingFile", "StdoutLines", "audit_record"]
