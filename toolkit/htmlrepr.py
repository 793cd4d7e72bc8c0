"""Small, escaped HTML tables for Jupyter: the ``_repr_html_`` of the helpers' results.

Every value goes through `html.escape` (fields) or ``DataFrame.to_html(escape=True)`` (tables), so
a file name or an error message from a partner can never inject markup into a notebook or a
run report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

import pandas as pd

__all__ = ["changes_text", "fields_html", "frame_html", "plan_display", "section_html"]

MAX_ROWS = 50  # rows shown of a table in a repr; the caption says how many there are


def frame_html(
    frame: pd.DataFrame, *, max_rows: int = MAX_ROWS, css: str = "", index: bool = False
) -> str:
    """Return ``frame`` as an escaped HTML table of at most ``max_rows`` rows, saying if cut."""
    shown = frame.head(max_rows) if len(frame) > max_rows else frame
    classes = ["dataframe", *css.split()] if css else None
    table: str = shown.to_html(escape=True, index=index, na_rep="", border=0, classes=classes)
    if len(frame) > max_rows:
        table += f"<p><em>first {max_rows:,} of {len(frame):,} rows</em></p>"
    return table


def fields_html(title: str, values: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> str:
    """Return a two-column (field, value) HTML table headed by ``title``, every value escaped."""
    pairs = values.items() if isinstance(values, Mapping) else values
    rows = "".join(
        f'<tr><th style="text-align:left">{escape(str(k))}</th>'
        f'<td style="text-align:left">{escape(_text(v))}</td></tr>'
        for k, v in pairs
    )
    return f"<table><caption>{escape(title)}</caption><tbody>{rows}</tbody></table>"


def section_html(title: str, body: str, *, css: str = "") -> str:
    """Return ``body`` (HTML already escaped) under an ``<h4>`` ``title``, in a ``div``."""
    cls = f' class="{escape(css)}"' if css else ""
    return f"<div{cls}><h4>{escape(title)}</h4>{body}</div>"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def changes_text(changes: Any) -> str:
    """Return a plan row's ``changes`` as ``customer: 'A' → 'B'; revision: 1 → 2`` (or '')."""
    if not isinstance(changes, Mapping):
        return "" if changes is None else str(changes)
    parts = []
    for column, change in changes.items():
        if isinstance(change, list | tuple) and len(change) == 2:
            parts.append(f"{column}: {change[0]!r} → {change[1]!r}")
        else:
            parts.append(f"{column}: {change!r}")
    return "; ".join(parts)


def plan_display(plan: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of an upsert plan with ``changes`` as readable text, for showing."""
    shown = plan.copy()
    if "changes" in shown.columns:
        shown["changes"] = [changes_text(c) for c in shown["changes"]]
    if "action" in shown.columns:
        shown["action"] = shown["action"].astype(str)
    return shown
