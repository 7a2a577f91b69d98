"""TOML files as people save them: the config file and the mapping files."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

BOM = b"\xef\xbb\xbf"  # what Windows Notepad puts before UTF-8 text


def read_toml_file(path: Path) -> dict[str, Any]:
    """The file's TOML, a UTF-8 byte order mark before it skipped (tomllib takes it for a statement: "Invalid
    statement (at line 1, column 1)"). Raises ValueError with the reason (invalid TOML, not UTF-8 text), or
    OSError when the file cannot be read."""
    data = path.read_bytes()
    if data.startswith(BOM):
        data = data[len(BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start + 1} is not UTF-8): save the file as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"invalid TOML: {exc}") from None


def toml_kind(value: Any) -> str:
    """What a TOML value is, in the words of the file's author: for an error that says what a key takes and
    what it was given instead."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    kinds = ((int, "a whole number"), (float, "a number with a fraction"), (str, "a text"), (list, "a list"),
             (dict, "a table"))
    return next((name for kind, name in kinds if isinstance(value, kind)), "a date or time")
