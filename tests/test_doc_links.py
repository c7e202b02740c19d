"""Every relative link and #anchor in the README, deploy/README.md and docs/*.md resolves.

A link names a file or directory that exists in the repository; an anchor names a heading of the page
it points into, spelled as GitHub spells heading ids (lowercase, punctuation dropped, spaces as
hyphens, a repeated heading numbered `-1`, `-2`, ...) or an `<a id>` / `<a name>` on that page. Links
and headings inside code (fenced blocks, inline spans) are not links or headings and are skipped.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parent.parent
CHECKED = sorted([REPO / "README.md", REPO / "deploy" / "README.md", REPO / "bench" / "RESULTS.md",
                  *(REPO / "docs").glob("*.md")])

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]\n]+\]:[ \t]*<?([^\s>]+)>?", re.MULTILINE)
HTML_ANCHOR = re.compile(r"<a\s+[^>]*\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...
MARKUP = re.compile(r"!?\[([^\]]*)\]\([^)]*\)|<[^>]+>")  # links keep their text; HTML tags go


@dataclass(frozen=True)
class Link:
    """One link as written: the page it is on, its line, and its target."""

    page: Path
    line: int
    target: str


def prose(text: str) -> str:
    """The text with fenced code blocks and inline code spans blanked (line numbers kept)."""
    lines: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        opened = FENCE.match(line)
        if fence is None and opened:
            fence = opened.group(1)
            lines.append("")
            continue
        if fence is not None:
            # A fence closes with at least as many of the same character and nothing else.
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence) \
                    and not line.strip().strip(fence[0]):
                fence = None
            lines.append("")
            continue
        lines.append(line)
    return CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), "\n".join(lines))


def slug(heading: str) -> str:
    """GitHub's id for a heading's text: markup dropped, lowercase, letters, digits, `-`, `_` and spaces
    kept, spaces become hyphens."""
    text = MARKUP.sub(lambda m: m.group(1) or "", heading).replace("`", "")
    text = re.sub(r"(\*\*|__|\*)", "", text).lower()
    kept = "".join(c for c in text if c in "-_ " or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every id a page offers: its headings' slugs (repeats numbered as GitHub does) and HTML anchors."""
    ids: set[str] = set()
    seen: dict[str, int] = {}
    plain = prose(text).split("\n")
    for number, line in enumerate(text.splitlines()):
        if not plain[number].strip():
            continue  # blank, or inside a fenced block
        ids.update(HTML_ANCHOR.findall(line))
        heading = HEADING.match(line)
        if heading is None:
            continue
        base = slug(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        ids.add(base if count == 0 else f"{base}-{count}")
    return ids


def links(page: Path) -> list[Link]:
    """The relative links (inline, their text over several lines too, and reference definitions) of a
    page, code excluded, in the order written."""
    text = prose(page.read_text(encoding="utf-8"))
    found = [(m.start(), m.group(1)) for m in INLINE_LINK.finditer(text)]
    found += [(m.start(), m.group(1)) for m in REFERENCE_DEF.finditer(text)]
    return [Link(page, text.count("\n", 0, at) + 1, target)
            for at, target in sorted(found) if target and not EXTERNAL.match(target)]


def broken(link: Link, root: Path = REPO) -> str | None:
    """Why a link does not resolve, or None if it does."""
    path_part, _, fragment = link.target.partition("#")
    target = (link.page.parent / unquote(path_part)).resolve() if path_part else link.page
    if not target.exists():
        return f"no such file {path_part}"
    if root not in (target, *target.parents):
        return f"{path_part} is outside the repository"
    if not fragment:
        return None
    if target.is_dir() or target.suffix.lower() != ".md":
        return f"#{fragment} on {path_part}, which is not a Markdown page"
    if unquote(fragment) not in anchors(target.read_text(encoding="utf-8")):
        return f"no heading #{fragment} in {target.relative_to(root)}"
    return None


def problems(pages: list[Path], root: Path = REPO) -> list[str]:
    """Every broken link of these pages, as `page:line: target: why`."""
    found = []
    for page in pages:
        for link in links(page):
            why = broken(link, root)
            if why is not None:
                found.append(f"{page.relative_to(root)}:{link.line}: {link.target}: {why}")
    return found


@pytest.mark.parametrize("page", CHECKED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert page.exists(), page
    assert problems([page]) == []


def test_the_checked_pages_hold_links_to_check() -> None:
    # A parser that found no links would pass every page above.
    assert len(links(REPO / "README.md")) >= 10
    assert any("#" in link.target for page in CHECKED for link in links(page))


@pytest.mark.parametrize(("heading", "expected"), [
    ("Routes per format", "routes-per-format"),
    ("Responses, Messages and embeddings", "responses-messages-and-embeddings"),
    ("The seed's backend registration", "the-seeds-backend-registration"),
    ("`gateway.limits` and `max_body_bytes`", "gatewaylimits-and-max_body_bytes"),
    ("Scaling: 10,000 requests/s — per core", "scaling-10000-requestss--per-core"),
    ("**Bold** and [a link](x.md) (kept)", "bold-and-a-link-kept"),
    ("Zürich ≥ 2", "zürich--2"),
])
def test_slugs_are_githubs(heading: str, expected: str) -> None:
    assert slug(heading) == expected


def test_repeated_headings_are_numbered_and_code_is_no_heading() -> None:
    text = "# Notes\n\n## Notes\n\n```bash\n# not a heading\n```\n\n## Notes\n<a id=\"kept\"></a>\n"
    assert anchors(text) == {"notes", "notes-1", "notes-2", "kept"}


def test_broken_files_and_anchors_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "other.md").write_text("# Other\n\n## Routes per format\n", encoding="utf-8")
    page = root / "README.md"
    page.write_text(
        "# Top\n\n"
        "[ok](docs/other.md#routes-per-format) [ok too](#top) [site](https://example.com/#nothing)\n"
        "[gone](docs/missing.md) [no anchor](docs/other.md#routes-per-tenant) [here](#below)\n"
        "`[in code](docs/missing.md)`\n\n"
        "```\n[in a block](docs/missing.md)\n```\n\n"
        "[ref]: docs/nowhere.md\n"
        "[outside](../elsewhere.md)\n"
        "[a link over\ntwo lines](docs/other.md#top)\n",
        encoding="utf-8")
    (tmp_path / "elsewhere.md").write_text("# Elsewhere\n", encoding="utf-8")
    assert problems([page], root) == [
        "README.md:4: docs/missing.md: no such file docs/missing.md",
        "README.md:4: docs/other.md#routes-per-tenant: no heading #routes-per-tenant in docs/other.md",
        "README.md:4: #below: no heading #below in README.md",
        "README.md:11: docs/nowhere.md: no such file docs/nowhere.md",
        "README.md:12: ../elsewhere.md: ../elsewhere.md is outside the repository",
        "README.md:13: docs/other.md#top: no heading #top in docs/other.md",
    ]
