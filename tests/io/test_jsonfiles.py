"""siamrdm's own JSON (siamrdm.io.jsonfiles): parsed one strict way, damage a one-line DataError."""

from __future__ import annotations

import pytest

from siamrdm.errors import DataError
from siamrdm.io import jsonfiles

DEEP = "[" * 50_000 + "]" * 50_000  # valid JSON that overflows a recursive parser


def test_siamrdm_json_files_are_parsed_one_way() -> None:
    """Damaged JSON of siamrdm's own (too deep to parse, NaN, nested past any file siamrdm writes) is a
    DataError naming the file, never a RecursionError."""
    nested = lambda depth: "[" * depth + "]" * depth  # noqa: E731
    depth = jsonfiles.MAX_JSON_DEPTH
    assert jsonfiles.parse_json(nested(depth), "f.json", "settings") == eval(nested(depth))
    for text, problem in ((DEEP, "nested more than"), (nested(depth + 1), "nested more than"),
                          ('{"lr": NaN}', "NaN is not a number"), ("{", "not strict JSON")):
        with pytest.raises(DataError, match=problem) as info:
            jsonfiles.parse_json(text, "f.json", "settings")
        assert str(info.value).startswith("f.json: malformed settings") and "\n" not in str(info.value)
