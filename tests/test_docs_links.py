"""Every relative link in README and docs/ leads somewhere: the file exists and, when the
link names a section, the page has a heading of that name (as GitHub makes anchors from
headings). Moving the reference out of README made dozens of links; none may dangle."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.docpages import PAGES
from tests.support.processes import REPO

LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors: each heading lower-cased, punctuation dropped, spaces as hyphens."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    headings = re.findall(r"^#{1,6} (.+)$", text, re.M)
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings
    }


def links() -> list[object]:
    found = []
    for page in PAGES:
        text = FENCE.sub("", page.read_text(encoding="utf-8"))
        for match in LINK.finditer(text):
            target = match.group("target")
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:: not ours to check here
            found.append(pytest.param(page, target, id=f"{page.relative_to(REPO)}:{target}"))
    return found


def test_the_pages_have_links_to_check() -> None:
    assert len(links()) >= 40


@pytest.mark.parametrize(("page", "target"), links())
def test_each_relative_link_leads_to_a_file_and_its_section(page: Path, target: str) -> None:
    path, _, section = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    assert linked.exists(), f"{page.name} links {target}: no such file"
    if section:
        assert linked.suffix == ".md", f"{target}: a section of a file that is not a page"
        assert section in anchors(linked), f"{page.name} links {target}: no such heading"


def test_the_anchor_reader_makes_githubs_anchors(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n## Behind a proxy: trusted_proxies, and the key\n### 2026-11-21/22: a\n"
    )
    assert anchors(page) == {
        "title",
        "behind-a-proxy-trusted_proxies-and-the-key",
        "2026-11-2122-a",
    }
