"""nbcron's toolkit: what an integration notebook imports.

Notebook side: ``context``, ``secret``, ``metric`` and the helpers (``upsert``, ``plan``, ...).
The runner side (schedules, runner, records, cli) lives in submodules and is not re-exported.
Heavy helpers are imported on first use so that ``import toolkit`` stays cheap in the runner.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from toolkit.context import RunContext, context, metric, secret
from toolkit.errors import (
    ConfigError,
    NbcronError,
    ParameterError,
    RunError,
    ScheduleError,
    SecretError,
    UpsertError,
)
from toolkit.poll import poll  # bound eagerly: the function shares its module's name
from toolkit.state import state  # likewise
from toolkit.workbench import workbench  # likewise; its widgets load when one is built

if TYPE_CHECKING:  # the lazy names, for type checkers and editors
    from toolkit.apiclient import RetryPolicy
    from toolkit.apitarget import ApiTarget
    from toolkit.auth import ApiKey, Bearer
    from toolkit.completion import redrive
    from toolkit.delivery import DeliveryError, DeliveryExistsError
    from toolkit.exports import ExportError, ExportResult, export
    from toolkit.imports import import_files
    from toolkit.mail import EmailResult, MailError, send_email
    from toolkit.outcomes import ImportResult
    from toolkit.pages import PollError
    from toolkit.pagination import LinkHeader, NextCursor, Offset, PageNumber
    from toolkit.parsers import ParseError, parse
    from toolkit.pdf import PdfError
    from toolkit.poll import Poller, PollResult
    from toolkit.queues import QueueError, QueueMessage, QueueResult, drain_queue
    from toolkit.sinks import UpsertResult, plan, upsert
    from toolkit.sources import ReadyFile, SourceError, list_files
    from toolkit.sqlsource import SqlPoller, SqlPollResult, SqlSourceError, poll_sql
    from toolkit.state import State, StateConflict
    from toolkit.workbench import Workbench
    from toolkit.xmlexport import XsdError, XsdViolation, validate_xml
    from toolkit.xmlrecords import xml_root

__version__ = "0.1.0"

# name -> module that defines it; loaded on first attribute access (PEP 562).
_LAZY: dict[str, str] = {
    "ApiKey": "toolkit.auth",
    "ApiTarget": "toolkit.apitarget",
    "Bearer": "toolkit.auth",
    "DeliveryError": "toolkit.delivery",
    "DeliveryExistsError": "toolkit.delivery",
    "EmailResult": "toolkit.mail",
    "ExportError": "toolkit.exports",
    "ExportResult": "toolkit.exports",
    "ImportResult": "toolkit.outcomes",
    "LinkHeader": "toolkit.pagination",
    "MailError": "toolkit.mail",
    "NextCursor": "toolkit.pagination",
    "Offset": "toolkit.pagination",
    "PageNumber": "toolkit.pagination",
    "ParseError": "toolkit.parsers",
    "PdfError": "toolkit.pdf",
    "PollError": "toolkit.pages",
    "PollResult": "toolkit.poll",
    "Poller": "toolkit.poll",
    "QueueError": "toolkit.queues",
    "QueueMessage": "toolkit.queues",
    "QueueResult": "toolkit.queues",
    "ReadyFile": "toolkit.sources",
    "RetryPolicy": "toolkit.apiclient",
    "SourceError": "toolkit.sources",
    "SqlPollResult": "toolkit.sqlsource",
    "SqlPoller": "toolkit.sqlsource",
    "SqlSourceError": "toolkit.sqlsource",
    "State": "toolkit.state",
    "StateConflict": "toolkit.state",
    "UpsertResult": "toolkit.sinks",
    "XsdError": "toolkit.xmlexport",
    "XsdViolation": "toolkit.xmlexport",
    "drain_queue": "toolkit.queues",
    "export": "toolkit.exports",
    "import_files": "toolkit.imports",
    "list_files": "toolkit.sources",
    "parse": "toolkit.parsers",
    "plan": "toolkit.sinks",
    "poll_sql": "toolkit.sqlsource",
    "redrive": "toolkit.completion",
    "send_email": "toolkit.mail",
    "upsert": "toolkit.sinks",
    "validate_xml": "toolkit.xmlexport",
    "Workbench": "toolkit.workbench",
    "xml_root": "toolkit.xmlrecords",
}

__all__ = [
    "ApiKey",
    "ApiTarget",
    "Bearer",
    "ConfigError",
    "DeliveryError",
    "DeliveryExistsError",
    "EmailResult",
    "ExportError",
    "ExportResult",
    "ImportResult",
    "LinkHeader",
    "MailError",
    "NbcronError",
    "NextCursor",
    "Offset",
    "PageNumber",
    "ParameterError",
    "ParseError",
    "PdfError",
    "PollError",
    "PollResult",
    "Poller",
    "QueueError",
    "QueueMessage",
    "QueueResult",
    "ReadyFile",
    "RetryPolicy",
    "RunContext",
    "RunError",
    "ScheduleError",
    "SecretError",
    "SourceError",
    "SqlPollResult",
    "SqlPoller",
    "SqlSourceError",
    "State",
    "StateConflict",
    "UpsertError",
    "UpsertResult",
    "Workbench",
    "XsdError",
    "XsdViolation",
    "context",
    "drain_queue",
    "export",
    "import_files",
    "list_files",
    "metric",
    "parse",
    "plan",
    "poll",
    "poll_sql",
    "redrive",
    "secret",
    "send_email",
    "state",
    "upsert",
    "validate_xml",
    "workbench",
    "xml_root",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
