"""siamrdm's own JSON files: read one strict way (`parse_json`, `read_json`), written one strict way
(`strict_json_text`: values as strict JSON can hold them, `json_safe`; `files.write_json` writes the file)."""

from __future__ import annotations

import errno
import json
import math
import os

from ..errors import DataError

MAX_JSON_DEPTH = 64  # siamrdm's own files nest a few levels; deeper is damage (and would overflow a recursion)


def parse_json(content: bytes | str, path: str | os.PathLike, what: str) -> object:
    """Strict JSON (no NaN or Infinity) of one of siamrdm's own files, or a DataError naming `path`: the one way
    siamrdm parses what it wrote (settings.json, lr_find.json, the run marker, manifest lines), so a damaged
    file (truncated, NaN, nested thousands deep) is one line, never a traceback."""

    def refuse(constant: str):
        raise ValueError(f"{constant} is not a number JSON allows")

    try:
        value = json.loads(content, parse_constant=refuse)
    except RecursionError:
        value = None  # reported below as nested too deep
        depth = MAX_JSON_DEPTH + 1
    except ValueError as exc:  # UnicodeDecodeError is one
        raise DataError(f"{path}: malformed {what}, not strict JSON ({' '.join(str(exc).split())})") from None
    else:
        depth = _depth(value)
    if depth > MAX_JSON_DEPTH:
        raise DataError(f"{path}: malformed {what}, nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def _depth(value: object) -> int:
    """How deep lists and objects nest in a parsed JSON value (counted without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def read_json(path: str | os.PathLike, what: str, limit: int = 2**20) -> object:
    """`parse_json` of a file of at most `limit` bytes; unreadable or larger: a DataError naming it."""
    try:
        with open(path, "rb") as f:
            content = f.read(limit + 1)
    except OSError as exc:
        raise DataError(f"{path}: unreadable {what} ({os.strerror(exc.errno or errno.EIO)})") from None
    if len(content) > limit:
        raise DataError(f"{path}: malformed {what}, larger than {limit:,} bytes")
    return parse_json(content, path, what)


def json_safe(value):
    """`value` as strict JSON can hold it: NaN and inf become None, numpy scalars and arrays Python values."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def strict_json_text(value, **formatting) -> str:
    """`value` as strict JSON text, the one way siamrdm writes JSON: `json_safe` first (NaN and inf become null),
    then `allow_nan=False`, so no NaN ever reaches a file or the screen. `formatting` is json.dumps's (indent,
    sort_keys, default, ...), each caller's own, so the bytes of a file stay what they were."""
    return json.dumps(json_safe(value), allow_nan=False, **formatting)
