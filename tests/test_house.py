"""The repository stands on its own: no text in it (README, docs, code, comments, docstrings, configs)
points at a document or path a clone does not have, and every link between its Markdown pages resolves."""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEXT = (".py", ".md", ".yaml", ".yml", ".txt", ".toml", ".cfg", ".sh", ".ini")

# Each names a document or folder that lives beside the repository, never in it. Built from parts so
# that this file does not match itself.
OUTSIDE = [re.escape(".." + "/shared"), r"\b" + "DESIGN" + r"\.md\b", r"\b" + "STYLE" + r"\.md\b",
           r"\bshared/" + r"tools\b", r"\bshared/" + r"reference\b"]


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    return [REPO / n for n in names if n.endswith(TEXT) or n == ".ci/run" if (REPO / n).is_file()]


def test_no_text_points_outside_the_repository():
    pattern = re.compile("|".join(OUTSIDE))
    hits = []
    for path in tracked_text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
    assert not hits, "references to documents outside the repository:\n" + "\n".join(hits)


LINK = re.compile(r"\]\(([^)\s#]+)(#[^)]*)?\)")


@pytest.mark.parametrize("page", sorted(p.relative_to(REPO).as_posix() for p in tracked_text_files()
                                        if p.suffix == ".md"))
def test_every_relative_link_of_a_page_resolves(page):
    path = REPO / page
    broken = [target for target, _ in LINK.findall(path.read_text())
              if "://" not in target and not target.startswith("mailto:")
              and not (path.parent / target).resolve().exists()]
    assert not broken, f"{page} links to files the repository lacks: {broken}"
