"""Durations (``10m``, ``1h30m``, ``45s``) and sizes (``10MB``, ``512KiB``) as people write them."""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration", "parse_size"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_SIZE_FACTOR = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_duration(value: object) -> float:
    """Return seconds for ``90``, ``"90s"``, ``"10m"``, ``"1h30m"``; raise ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 10m or 1h")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{value!r} is negative; a duration must be 0 or more")
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    if not text:
        raise ValueError("an empty duration; write e.g. 30s, 10m or 1h")
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 10m, 1h30m or 2d")
    return total


def format_duration(seconds: float) -> str:
    """Return a short human form such as ``1h30m``, ``5s`` or ``0.25s``."""
    if seconds < 60:
        return f"{seconds:g}s"
    out = []
    rest = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out)


def parse_size(value: object) -> int:
    """Return bytes for ``1048576``, ``"10MB"``, ``"512KiB"``; raise ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; write e.g. 10MB or 512KiB")
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size; write e.g. 10MB or 512KiB")
    number, unit = float(match.group(1)), match.group(2).lower()
    prefix = unit[:1] if unit[:1] in "kmgt" else ""
    factor = (1024 ** (" kmgt".index(prefix))) if "i" in unit else _SIZE_FACTOR[prefix]
    return int(number * factor)
