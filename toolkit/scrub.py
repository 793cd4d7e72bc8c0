"""Secret scrubbing: no secret value survives into a saved notebook, the index or a log line.

Secrets reach the kernel as environment variables only, but a notebook can still print one, log
it, put it in a DataFrame or raise it in an exception. Every save walks the whole notebook and
replaces each secret, in the spellings it takes on the way out (as is, HTML-escaped for rich
displays, escaped inside a Python repr or JSON string, URL-encoded), with ``[secret NAME]``.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = ["Scrubber"]


class Scrubber:
    """Replaces secret values in strings and, in place, in nested notebook structures."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        spellings: dict[str, str] = {}
        for name, value in secrets.items():
            if not value:
                continue
            for variant in _variants(value):
                # A longer secret that contains a shorter one must be replaced first.
                spellings.setdefault(variant, f"[secret {name}]")
        self._replacement = spellings
        self._pattern = (
            re.compile("|".join(re.escape(v) for v in sorted(spellings, key=len, reverse=True)))
            if spellings
            else None
        )

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, value: str) -> str:
        """Return ``value`` with every secret replaced."""
        if self._pattern is None or not value:
            return value
        return self._pattern.sub(lambda m: self._replacement[m.group(0)], value)

    def node(self, obj: Any) -> Any:
        """Scrub every string inside dicts and lists, in place; return the (scrubbed) object."""
        if self._pattern is None:
            return obj
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            for key in list(obj):
                value = obj[key]
                if isinstance(value, str):
                    obj[key] = self.text(value)
                elif isinstance(value, (dict, list)):
                    self.node(value)
                new_key = self.text(key) if isinstance(key, str) else key
                if new_key != key:
                    obj[new_key] = obj.pop(key)
        elif isinstance(obj, list):
            for i, value in enumerate(obj):
                if isinstance(value, str):
                    obj[i] = self.text(value)
                elif isinstance(value, (dict, list)):
                    self.node(value)
        return obj


def _variants(value: str) -> list[str]:
    out = [
        value,
        html.escape(value),
        html.escape(value, quote=False),
        repr(value)[1:-1],
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        quote(value, safe=""),
        quote_plus(value),
    ]
    return list(dict.fromkeys(v for v in out if v))
