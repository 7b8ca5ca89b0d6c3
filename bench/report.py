"""BENCHMARKS.md: one section per benchmark, rewritten in place between markers.

Each benchmark renders its own markdown and calls `update_section(name, markdown)`,
which puts it between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` under a
`## NAME` heading and a line saying where and how it was measured (CPUs, CPU
model, kernel, Python, date, the exact command). A section already in the file is
replaced where it stands; a new one is appended. Other sections and any text
outside the markers are kept byte for byte, and concurrent writers (benchmarks
run side by side) are serialized by a lock on the file.

Only a full default run writes its section (`publish_section`): a run with any
option that changes what is measured (`--quick`, `--no-postgres`, other sizes,
another target...) prints its table and says why it left BENCHMARKS.md alone,
so a committed section is always the whole comparison its command names.
Options that only say where files go (`--work-dir`, `--keep`) do not count.
"""

from __future__ import annotations

import datetime
import fcntl
import math
import os
import platform
import re
import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_PATH = REPO_ROOT / "BENCHMARKS.md"

FILE_HEADER = """# Benchmarks

Strata side by side with a named peer, on the same machine and disk, in the same run.
Each section is written by its benchmark (`python -m bench.<name> --help`) through
`bench/report.py`; rerun the command a section names to refresh it. Numbers from a
small shared machine are indicative: each section says what it ran on.
"""

_NAME_RE = re.compile(r"[a-z0-9_.-]+")


def start_marker(name: str) -> str:
    return f"<!-- bench:{name} -->"


def end_marker(name: str) -> str:
    return f"<!-- /bench:{name} -->"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def invoking_command() -> str:
    """The command line this process was started with, interpreter shortened to `python`."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(["python", *argv[1:]])


def machine_line(command: str | None = None, when: datetime.datetime | None = None) -> str:
    """Where and how a section was measured, as one markdown line."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    command = command or invoking_command()
    return (
        f"_Measured {when.strftime('%Y-%m-%d %H:%M UTC')} on {os.cpu_count()} CPUs ({cpu_model()}), "
        f"Linux {platform.release()}, Python {platform.python_version()}; command: `{command}`_"
    )


def render_section(name: str, markdown: str, *, title: str | None = None, command: str | None = None) -> str:
    """The whole marked section, markers included."""
    return "\n".join(
        [start_marker(name), f"## {title or name}", "", machine_line(command), "", markdown.strip(), end_marker(name)]
    )


def replace_section(document: str, name: str, section: str) -> str:
    """`document` with the marked section `name` replaced by `section` (appended if absent)."""
    start, end = start_marker(name), end_marker(name)
    begin = document.find(start)
    if begin >= 0:
        finish = document.find(end, begin)
        if finish < 0:
            raise ValueError(f"BENCHMARKS.md has {start} but no {end} after it: fix the file by hand")
        return document[:begin] + section + document[finish + len(end) :]
    if not document.strip():
        document = FILE_HEADER
    return document.rstrip("\n") + "\n\n" + section + "\n"


def update_section(
    name: str,
    markdown: str,
    *,
    title: str | None = None,
    command: str | None = None,
    path: Path = BENCHMARKS_PATH,
) -> Path:
    """Write `markdown` as section `name` of BENCHMARKS.md (created with a short header
    if missing). `command` defaults to this process's own command line. Returns the path."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"section name {name!r}: use lowercase letters, digits, '_', '.', '-'")
    section = render_section(name, markdown, title=title, command=command)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+", encoding="utf-8") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            updated = replace_section(f.read(), name, section)
            f.seek(0)
            f.write(updated)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return path


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between ranks."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


# Options that change nothing a run measures: where its files go, what it keeps.
NEUTRAL_OPTIONS = frozenset({"work_dir", "keep", "write"})


def add_write_argument(parser: argparse.ArgumentParser) -> None:
    """--write / --no-write, as every bench takes it (see `publish_section`)."""
    parser.add_argument(
        "--write", action=argparse.BooleanOptionalAction, default=None,
        help="write the table into BENCHMARKS.md: only a full default run does (any option other than "
        "--work-dir/--keep leaves it alone, saying so); --no-write: never",
    )


def add_work_dir_arguments(
    parser: argparse.ArgumentParser,
    work_dir_help: str = "where the throwaway data goes (default: a temp dir under $TMPDIR)",
    keep_help: str = "keep the work directory",
) -> None:
    """--work-dir and --keep, as every bench takes them: the options that only say where
    files go (NEUTRAL_OPTIONS), so a run with them still writes its section."""
    parser.add_argument("--work-dir", type=Path, default=None, help=work_dir_help)
    parser.add_argument("--keep", action="store_true", help=keep_help)


def _flag(action: argparse.Action) -> str:
    longs = [o for o in action.option_strings if o.startswith("--")]
    return max(longs, key=len) if longs else action.dest


def partial_run_reasons(
    parser: argparse.ArgumentParser, args: argparse.Namespace, neutral: frozenset[str] = NEUTRAL_OPTIONS
) -> list[str]:
    """Why `args` is not a full default run of `parser`'s bench: each option that
    differs from its default (after its type conversion), as it would be typed.
    Empty for a full default run."""
    defaults = vars(parser.parse_args([]))
    reasons = []
    for action in parser._actions:  # noqa: SLF001 - argparse's only public view of its options
        dest = action.dest
        if dest in neutral or dest == argparse.SUPPRESS or dest not in defaults:
            continue
        value = getattr(args, dest, defaults[dest])
        if value == defaults[dest]:
            continue
        if action.nargs == 0:  # a switch: --quick, --no-postgres
            reasons.append(_flag(action) if value else f"--no-{_flag(action).removeprefix('--')}")
        else:
            shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            reasons.append(f"{_flag(action)} {shown}")
    return reasons


def publish_section(
    name: str,
    markdown: str,
    *,
    reasons: list[str],
    write: bool | None,
    command: str,
    title: str | None = None,
    path: Path = BENCHMARKS_PATH,
) -> Path | None:
    """Write section `name` if this was a full default run (`reasons` empty) and
    `write` is not False (--no-write); else say on stderr why not. `command` is
    the full default run's command line, for that message. Returns the path written."""
    if write is False:
        print(f"BENCHMARKS.md section {name!r} left alone (--no-write)", file=sys.stderr)
        return None
    if reasons:
        print(
            f"BENCHMARKS.md section {name!r} left alone: not a full default run ({' '.join(reasons)}); "
            f"only `{command}` (with at most --work-dir/--keep) writes it",
            file=sys.stderr,
        )
        return None
    written = update_section(name, markdown, title=title, path=path)
    print(f"wrote section {name} of {written}", file=sys.stderr)
    return written
