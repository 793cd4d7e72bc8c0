"""The one exception tree of nbcron.

Every error a user can cause names the file, key or value that is wrong and says what to do::

    NbcronError                      base of everything nbcron raises on purpose
    ├── ConfigError                  bad settings, schedule file or notebook (CLI exit 2)
    │   ├── ScheduleError            a schedule file: names the file and the key
    │   ├── ParameterError           undeclared parameter, or a notebook without a parameters cell
    │   └── SecretError              a secret that cannot be resolved or read
    ├── RunNotFoundError             `show` / `report` for a run id the index does not hold
    ├── RunError                     a run that did not succeed (carries the record; CLI exit 1)
    └── UpsertError                  data that cannot be written: names table, row key and column

Notebook-side helpers define their own subclasses of NbcronError beside the code that raises
them: ``sources.SourceError``, ``parsers.ParseError``, ``imports.PermanentError``,
``pages.PollError``, ``state.StateConflict``, ``exports.ExportError``, ``xlsx.WorkbookError``,
``delivery.DeliveryError`` (``DeliveryExistsError``), ``mail.MailError``,
``reports.ReportError``, ``sqlsource.SqlSourceError``, ``queues.QueueError``, ``pdf.PdfError``,
``xmlexport.XsdError`` and ``xmlexport.XsdViolation`` (an ``ExportError``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolkit.records import RunRecord

__all__ = [
    "ConfigError",
    "NbcronError",
    "ParameterError",
    "RunError",
    "RunNotFoundError",
    "ScheduleError",
    "SecretError",
    "UpsertError",
]


class NbcronError(Exception):
    """Base class of every error nbcron raises on purpose."""


class ConfigError(NbcronError):
    """Settings, a schedule or a notebook are not usable as given."""


class ScheduleError(ConfigError):
    """A schedule file is invalid; the message starts with ``file: `key```."""

    def __init__(self, file: str, key: str | None, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        where = f"{file}: `{key}` " if key else f"{file}: "
        super().__init__(where + reason)


class ParameterError(ConfigError):
    """A parameter the notebook's ``parameters`` cell does not declare, or no such cell."""


class SecretError(ConfigError):
    """A secret could not be resolved (runner side) or is not set (notebook side)."""


class RunNotFoundError(NbcronError):
    """No run with this id is in the index."""


class RunError(NbcronError):
    """A run ended failed, timed out or interrupted; ``record`` says how."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record
        err = record.error or {}
        super().__init__(
            f"run {record.run_id} {record.status}: {err.get('ename', '')}: {err.get('evalue', '')}"
        )


class UpsertError(NbcronError):
    """Rows that cannot be written; names the table, the row's key and the column."""

    def __init__(self, message: str, **fields: Any) -> None:
        self.fields = fields
        super().__init__(message)
