"""siamrdm's own JSON (siamrdm.io.jsonfiles): parsed one strict way, damage a one-line DataError."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from siamrdm.errors import DataError
from siamrdm.io import files, jsonfiles
from siamrdm.io.jsonfiles import parse_json

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


def test_write_json_is_strict_atomic_and_listed(tmp_path: Path) -> None:
    """The one JSON writer: NaN and inf become null exactly as json_safe makes them (numpy values as Python's),
    each caller's formatting kept byte for byte, the file listed in its run folder's manifest, and a value
    JSON cannot hold is refused with nothing written and no temporary file left."""
    value = {"loss": float("nan"), "rates": [np.float32(0.5), np.inf, -np.inf], "kept": np.int64(3), 2: (1.0,)}
    run = tmp_path / "run"
    with files.run_folder(run, "lr-find"):
        path = files.write_json(run / "out.json", value, indent=1, sort_keys=True)
    assert parse_json(path.read_bytes(), path, "test") == jsonfiles.json_safe(value)
    assert path.read_text() == json.dumps(jsonfiles.json_safe(value), indent=1, sort_keys=True)
    assert "out.json" in files.read_manifest(run)
    with pytest.raises(TypeError):
        files.write_json(tmp_path / "set.json", {"a": {1, 2}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    # default=str (settings.json, evaluation.json) turns what JSON cannot hold into its text, never into NaN
    assert jsonfiles.strict_json_text({"path": Path("a"), "x": np.nan}, default=str) == '{"path": "a", "x": null}'
