"""What the `strata` commands print for a user to act on: command lines that run
as printed when pasted in the same directory, and `--json` renderings."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

# The data dir every command uses when none is given (as `./.strata`, relative to the current directory).
DEFAULT_DATA_DIR = Path(".strata")


def _pasteable(path: str) -> str:
    """`path` as a command word: relative when under the current directory (as a user typed it), else absolute."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute)
    return shlex.quote(relative if not relative.startswith("..") else absolute)


def strata_command() -> str:
    """How to run `strata` as this process was run: `strata` when that is what PATH finds,
    else the script's path (`.venv/bin/strata`), or `<python> -m strata`."""
    script = sys.argv[0] if sys.argv else ""
    if Path(script).name == "strata" and Path(script).is_file():
        found = shutil.which("strata")
        if found and os.path.samefile(found, script):
            return "strata"
        return _pasteable(script)
    return f"{python_command()} -m strata"


def python_command() -> str:
    """This interpreter (a venv's `.venv/bin/python`), as a command word."""
    found = shutil.which("python")
    if found and os.path.abspath(found) == os.path.abspath(sys.executable):
        return "python"
    return _pasteable(sys.executable)


def data_dir_flag(data_dir: Path) -> str:
    """` --data-dir DIR` for a command line about `data_dir` (nothing for the default)."""
    return "" if data_dir == DEFAULT_DATA_DIR else f" --data-dir {shlex.quote(str(data_dir))}"


def message_dict(message: Message) -> dict[str, Any]:
    """A flat protobuf message (scalars only) as a dict, every field present, integers as numbers."""
    return {field.name: getattr(message, field.name) for field in message.DESCRIPTOR.fields}


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2))
