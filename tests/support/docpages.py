"""The project's docs as the tests read them: which pages they are, their fenced blocks, and
the shell lines in those blocks (what a reader would paste into a terminal).

One list of pages for every test that holds the docs to something (the links that lead
somewhere, the YAML that loads, the commands that run): a page added here is checked by all.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from tests.support.processes import REPO

PAGES = [
    REPO / "README.md",
    REPO / "CHANGELOG.md",
    REPO / "bench" / "README.md",
    REPO / "deploy" / "kubernetes" / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
]
# a fenced block, its opening fence possibly indented (inside a list item)
FENCED = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*\n(?P<body>.*?)^(?P=indent)```", re.S | re.M
)
HEADING = re.compile(r"^#{1,6}[ \t]+(?P<title>.+?)[ \t]*$", re.M)
# the languages of blocks a reader types into a shell ("" is a block without one)
SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "console", ""})
# `monetag-gateway ...` as a reader runs it: on the PATH, from a venv, or as the module
GATEWAY_COMMAND = re.compile(
    r"^(?P<program>(?:\.venv/bin/|/opt/monetag-gateway/bin/)?monetag-gateway"
    r"|(?:\.venv/bin/|/opt/monetag-gateway/bin/)?python3? -m gateway)(?=\s|$)"
)


@dataclass(frozen=True)
class Block:
    page: str  # relative to the checkout
    line: int  # the opening fence's line, from 1
    lang: str
    body: str  # without the fence's indentation
    section: str  # the title of the heading above it ("" before the first)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass(frozen=True)
class ShellLine:
    """One command of a shell block: continued lines joined, a trailing comment left off."""

    page: str
    line: int  # where the command starts
    section: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def gateway(self) -> re.Match[str] | None:
        """The `monetag-gateway` program at the start of the line, if it runs the gateway."""
        return GATEWAY_COMMAND.match(self.text)


def blocks_in(text: str, page: str) -> Iterator[Block]:
    spans = [(match.start(), match.end()) for match in FENCED.finditer(text)]
    headings = [
        (match.start(), match.group("title"))
        for match in HEADING.finditer(text)
        if not any(start <= match.start() < end for start, end in spans)  # `# ` in a sh block
    ]
    for match in FENCED.finditer(text):
        indent = match.group("indent")
        body = "".join(line.removeprefix(indent) for line in match.group("body").splitlines(True))
        above = [title for at, title in headings if at < match.start()]
        line = text[: match.start()].count("\n") + 1
        yield Block(page, line, match.group("lang"), body, above[-1] if above else "")


def blocks(*langs: str) -> list[Block]:
    """Every fenced block of the docs in one of `langs`, page by page, in order."""
    return [
        block
        for page in PAGES
        for block in blocks_in(page.read_text(encoding="utf-8"), str(page.relative_to(REPO)))
        if block.lang in langs
    ]


def shell_lines_of(block: Block) -> Iterator[ShellLine]:
    """The commands of a shell block. In a `console` block only the `$ ` lines are commands
    (the rest is their output); a line ending in a backslash continues on the next."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(block.body.splitlines(), start=block.line + 1):
        if not pending:
            start = number
            if block.lang == "console":
                if not raw.startswith("$ "):
                    continue
                raw = raw[2:]
        if raw.endswith("\\"):
            pending.append(raw[:-1])
            continue
        text = without_comment("".join([*pending, raw])).strip()
        pending = []
        if text:
            yield ShellLine(block.page, start, block.section, text)


def shell_lines() -> list[ShellLine]:
    return [
        line
        for block in blocks(*SHELL_LANGUAGES)
        for line in shell_lines_of(block)
        if block.lang or line.gateway  # a block without a language may be a diagram
    ]


def without_comment(line: str) -> str:
    """The line up to a `#` that starts a word outside quotes, as the shell reads it."""
    quote = None
    for index, char in enumerate(line):
        if quote is not None:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def gateway_lines() -> list[ShellLine]:
    """Every `monetag-gateway` command line of the docs' shell blocks."""
    return [line for line in shell_lines() if line.gateway]
