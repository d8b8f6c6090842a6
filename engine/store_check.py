"""Damaged store files: refused before `serve` starts anything, checked in full by
`geofence store check`, and met at run time with one log line instead of a restart loop.

A damaged SQLite file (a broken header, a truncated file, a garbage page) heals by no
retry: a process that meets it would crash, be restarted and crash again forever. So:

- `refuse_damaged_stores(paths)`: before any child starts, a look at every store file's
  header and schema (`engine.database.file_problem`: a few pages, whatever the size);
  StoreDamagedError naming the first damaged file and what to do.
- `check_stores(paths, quick)`: SQLite's integrity_check (or quick_check) of every file,
  every page read: what `geofence store check` prints, one line per file.
- `exits_on_damage`: wraps a child's main; SQLite reporting damage anywhere inside it
  logs one line and exits with EXIT_STORE_DAMAGED; the supervisor does not restart it but
  stops the tree with one line (`stopped_on_damage`).
"""

import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.database import DatabaseError, file_problem, integrity_problems, is_damage
from engine.paths import EnginePaths

log = logging.getLogger("geofence.store")

EXIT_STORE_DAMAGED = 75    # a child met a damaged store file: do not restart it
ADVICE = ("restore the storage path from a backup (`geofence restore`), or move the file "
          "away to start without its data")


class StoreDamagedError(DatabaseError):
    """A store file is damaged: restore the storage path from a backup or move the file
    away; `geofence store check` checks every file in full."""


def damaged(path: Path, problem: str) -> StoreDamagedError:
    return StoreDamagedError(f"{path} is damaged ({problem}): {ADVICE}")


def refuse_damaged_stores(paths: EnginePaths) -> None:
    """StoreDamagedError for the first store file whose header or schema cannot be read."""
    for path in paths.store_files():
        problem = file_problem(path)
        if problem is not None:
            raise damaged(path, problem)


@dataclass(frozen=True)
class FileCheck:
    path: Path
    problems: list[str]        # [] when sound

    def line(self, root: Path) -> str:
        name = self.path.relative_to(root)
        if not self.problems:
            return f"ok       {name} ({self.path.stat().st_size:,} bytes)"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"DAMAGED  {name}: {self.problems[0]}{more}"


def check_stores(paths: EnginePaths, quick: bool = False) -> list[FileCheck]:
    """Every store file, checked page by page (SQLite's integrity_check or quick_check)."""
    return [FileCheck(path, file_problems(path, quick)) for path in paths.store_files()]


def file_problems(path: Path, quick: bool = False) -> list[str]:
    """The header look first (SQLite may read a broken header as an empty file), then
    every page."""
    problem = file_problem(path)
    return [problem] if problem is not None else integrity_problems(path, quick)


def exits_on_damage(main: Callable) -> Callable:
    """A decorator for a child process's main (its first argument the Settings): SQLite
    reporting a damaged file anywhere inside it becomes one log line (naming the file when
    its header or schema shows the damage) and exit status EXIT_STORE_DAMAGED."""
    @functools.wraps(main)
    def guarded(settings, *args, **kwargs):
        try:
            return main(settings, *args, **kwargs)
        except Exception as e:
            if not is_damage(e):
                raise
            log.critical(damage_line(EnginePaths(Path(settings.storage.path).absolute()), e))
            sys.exit(EXIT_STORE_DAMAGED)
    return guarded


def stopped_on_damage(child: str, paths: EnginePaths) -> StoreDamagedError:
    """What the supervisor says when `child` exited with EXIT_STORE_DAMAGED."""
    return StoreDamagedError(damage_line(paths, f"{child} stopped on it; its log line says more"))


def damage_line(paths: EnginePaths, error: BaseException | str) -> str:
    """One line for a damaged file met at run time: the file if a quick look finds it."""
    try:
        refuse_damaged_stores(paths)
    except StoreDamagedError as found:
        return str(found)
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return (f"a store file in {paths.root} is damaged ({reason}): `geofence store check` "
            f"names it; {ADVICE}")
