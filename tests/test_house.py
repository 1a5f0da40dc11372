"""The repository stands on its own: no text in it (README, docs, code, comments, docstrings, configs)
points at a document or path a clone does not have, and every link between its Markdown pages resolves."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEXT = (".py", ".md", ".yaml", ".yml", ".txt", ".toml", ".cfg", ".sh", ".ini")

# Each names a document or folder that lives beside the repository, never in it. Built from parts so
# that this file does not match itself.
OUTSIDE = [re.escape(".." + "/shared"), r"\b" + "DESIGN" + r"\.md\b", r"\b" + "STYLE" + r"\.md\b",
           r"\bshared/" + r"tools\b", r"\bshared/" + r"reference\b",
           # the tracker the project's work came from (an upstream issue is cited by its repository: owner/name#N)
           r"(?i:\bissue)" + r" \d+\b"]


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


# A path into the repository's own folders, as text and comments name files (`search/tuner.py:9`).
REPO_PATH = re.compile(r"(?<![\w./-])((?:asc|search|spaces|tests|\.ci)/[\w./-]*\w)")
PLACEHOLDER = re.compile(r"(^|/)x\.\w+$|(^|/)[A-Z_]{3,}(/|$)")  # spaces/x.yaml, runs/NAME: examples, not files


def test_every_repository_path_a_text_names_exists():
    """A file or folder named by its path from the repository's root (in a comment, a docstring, a
    page) is there: a file that moved or went leaves no reference behind."""
    missing = []
    for path in tracked_text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for target in REPO_PATH.findall(line):
                target = target.rstrip(".")
                if not PLACEHOLDER.search(target) and not (REPO / target).exists():
                    missing.append(f"{path.relative_to(REPO)}:{number}: {target}")
    assert not missing, "paths the repository lacks:\n" + "\n".join(missing)


LINK = re.compile(r"\]\(([^)\s#]+)(#[^)]*)?\)")


@pytest.mark.parametrize("page", sorted(p.relative_to(REPO).as_posix() for p in tracked_text_files()
                                        if p.suffix == ".md"))
def test_every_relative_link_of_a_page_resolves(page):
    path = REPO / page
    broken = [target for target, _ in LINK.findall(path.read_text())
              if "://" not in target and not target.startswith("mailto:")
              and not (path.parent / target).resolve().exists()]
    assert not broken, f"{page} links to files the repository lacks: {broken}"


# Every command the Markdown pages show, in their code blocks: `python -m search ...` and
# `python -m asc ...`, synopses included (``[--opt X]`` is taken as given, ``a|b`` as ``a``, ``N`` as a
# number, ``...`` dropped). The folder map's lines (a command, then a description after two spaces) and
# lists of commands (``demo|prepare|...``) are not commands.
FENCE = re.compile(r"```(?:bash|sh|console)?\n(.*?)```", re.S)
COMMAND = re.compile(r"python -m (search|asc) ([^'`#\n&;]*)")


def documented_commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for path in tracked_text_files():
        if path.suffix != ".md":
            continue
        for block in FENCE.findall(path.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                for tool, rest in COMMAND.findall(line):
                    rest = rest.split(" | ")[0].strip()  # a pipe into another command
                    if not rest or "|" in rest.split()[0] or re.match(r"\S+ {2,}", rest):
                        continue
                    words = [w.split("|")[0] for w in shlex.split(rest.replace("[", " ").replace("]", " "))
                             if w != "..."]
                    found.append((str(path.relative_to(REPO)), tool, ["2" if w == "N" else w for w in words]))
    return found


def test_every_documented_command_parses_with_the_real_command_line():
    import importlib

    from asc.__main__ import build_parser as asc_parser
    from search.__main__ import BENCHMARKS, build_parser as search_parser

    commands = documented_commands()
    assert len(commands) >= 30, commands  # the extraction itself works
    wrong = []
    for page, tool, words in commands:
        if tool == "search" and words[0] in BENCHMARKS:
            parser, argv = importlib.import_module(BENCHMARKS[words[0]][0]).build_parser(), words[1:]
        else:
            parser, argv = (search_parser() if tool == "search" else asc_parser()), words
        try:
            parser.parse_args(argv)
        except SystemExit:
            wrong.append(f"{page}: python -m {tool} {' '.join(words)}")
            continue
        # argparse takes an option's prefix too (``--stor``): the page must spell it whole
        spelled = {w.split("=")[0] for w in argv if w.startswith("--")} - option_strings(parser)
        if spelled:
            wrong.append(f"{page}: python -m {tool} {' '.join(words)}: {', '.join(sorted(spelled))} abbreviated")
    assert not wrong, "commands the command line refuses:\n" + "\n".join(wrong)


def option_strings(parser) -> set[str]:
    """Every option of ``parser`` and of its sub-commands."""
    import argparse

    out = set()
    for action in parser._actions:
        out.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= option_strings(sub)
    return out
