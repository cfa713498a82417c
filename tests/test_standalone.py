"""The repository stands alone: users clone it with nothing beside it, so nothing in it may read
or cite files outside it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.processes import REPO

# Built from parts so this file does not name what it looks for.
OUTSIDE = ["../" + "shared", "shared" + "/design", "shared" + "/seeds", "shared" + "/STYLE"]
CLIMBING = ["parents[" + "2]", "parent.parent" + ".parent"]


def tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    return [REPO / name for name in listed if name and (REPO / name).is_file()]


def test_no_file_reads_or_cites_anything_outside_the_repository() -> None:
    offenders = []
    for path in tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary (a screenshot): cites nothing
        for needle in OUTSIDE + (CLIMBING if path.suffix == ".py" else []):
            if needle in text:
                offenders.append(f"{path.relative_to(REPO)}: {needle}")
    assert offenders == []
