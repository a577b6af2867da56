"""The READMEs: English and Korean kept in step, local links that resolve, a README per folder.

A "command" is a line of a fenced code block (without its trailing `# comment`, which may be
translated) or an inline code span that starts a command (`make ...`, `mlflow ...`, ...).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGLISH = ROOT / "README.md"
KOREAN = ROOT / "README.ko.md"
READMES = (ENGLISH, KOREAN)

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
COMMAND_WORDS = ("make ", "mlflow ", "python -m ", "kubectl ", "docker ", "conda ")
TRAILING_COMMENT = re.compile(r"\s+#\s.*$")
# [text](target) and ![alt](target); a target ends at whitespace or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose_and_code(text: str) -> tuple[list[str], list[str]]:
    """Split a Markdown text into its prose lines and the lines of its fenced code blocks.

    Only blocks with a language (```bash, ```python) hold code; a bare ``` block is a listing
    or a program's output, which a translation keeps as it is but need not be compared.
    """
    prose, code, fence, is_code = [], [], None, False
    for line in text.splitlines():
        match = FENCE.match(line)
        if match and fence is None:
            fence, is_code = match.group(1), bool(line.strip()[3:].strip())
        elif match and line.strip() == fence:
            fence = None
        elif fence is None:
            prose.append(line)
        elif is_code:
            code.append(line)
    return prose, code


def headings(text: str) -> list[tuple[int, str]]:
    """(level, title) of each heading outside code blocks."""
    prose, _ = prose_and_code(text)
    found = []
    for line in prose:
        match = HEADING.match(line)
        if match:
            found.append((len(match.group(1)), match.group(2)))
    return found


def commands(text: str) -> set[str]:
    """The commands of a README: fenced code lines and inline command spans."""
    prose, code = prose_and_code(text)
    found = set()
    for line in code:
        line = TRAILING_COMMENT.sub("", line).strip()
        if line and not line.startswith("#"):
            found.add(line)
    for line in prose:
        for span in INLINE_CODE.findall(line):
            if span.startswith(COMMAND_WORDS):
                found.add(span.strip())
    return found


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    title = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", title).lower()
    return re.sub(r"[^\w\- ]", "", title).replace(" ", "-")


def links(path: Path) -> list[str]:
    prose, _ = prose_and_code(path.read_text(encoding="utf-8"))
    return [target for line in prose for target in LINK.findall(line)]


def test_korean_readme_has_the_english_sections() -> None:
    english = headings(ENGLISH.read_text(encoding="utf-8"))
    korean = headings(KOREAN.read_text(encoding="utf-8"))
    assert len(english) > 5
    assert [level for level, _ in korean] == [level for level, _ in english], (
        "README.ko.md's headings (levels, in order) differ from README.md's:\n"
        f"  README.md:    {english}\n  README.ko.md: {korean}"
    )


def test_korean_readme_has_the_english_commands() -> None:
    english = commands(ENGLISH.read_text(encoding="utf-8"))
    korean = commands(KOREAN.read_text(encoding="utf-8"))
    assert {"make run", "make test", "make test-all"} <= english
    assert not english - korean, f"in README.md only: {sorted(english - korean)}"
    assert not korean - english, f"in README.ko.md only: {sorted(korean - english)}"


NUMBER = re.compile(r"\d+(?:[.,]\d+)*%?")


def table_numbers(text: str) -> list[list[str]]:
    """The numbers of each table row (header and separator rows too), in order."""
    prose, _ = prose_and_code(text)
    return [NUMBER.findall(line) for line in prose if line.lstrip().startswith("|")]


def test_korean_readme_has_the_english_figures() -> None:
    """A translated table holds the same numbers, row by row (a figure updated in one README
    only shows here)."""
    english = table_numbers(ENGLISH.read_text(encoding="utf-8"))
    korean = table_numbers(KOREAN.read_text(encoding="utf-8"))
    assert english, "README.md has no table"
    assert korean == english


def test_readmes_link_to_each_other() -> None:
    assert "README.ko.md" in links(ENGLISH)[:3]
    assert "README.md" in links(KOREAN)[:3]


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.name)
def test_local_links_resolve(readme: Path) -> None:
    anchors = {slug(title) for _, title in headings(readme.read_text(encoding="utf-8"))}
    broken = []
    for target in links(readme):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        leads_nowhere = not (readme.parent / path).exists() if path else anchor not in anchors
        if leads_nowhere:
            broken.append(target)
    assert not broken, f"{readme.name}: links that lead nowhere: {broken}"


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.name)
def test_make_targets_exist(readme: Path) -> None:
    """Every `make TARGET` a README names is a target of the Makefile (or a file it includes)."""
    makefiles = [ROOT / "Makefile", *ROOT.glob("*/*.mk")]
    text = "\n".join(path.read_text(encoding="utf-8") for path in makefiles)
    targets = set(re.findall(r"^([a-z0-9][a-z0-9-]*):", text, flags=re.MULTILINE))
    named = {
        match
        for command in commands(readme.read_text(encoding="utf-8"))
        for match in re.findall(r"(?:^|\s|\()make ([a-z0-9][a-z0-9-]*)", command)
    }
    assert named, f"{readme.name} names no make target"
    assert not named - targets, f"{readme.name}: no such make target: {sorted(named - targets)}"


def test_every_project_and_example_folder_has_a_readme() -> None:
    folders = [
        folder
        for parent in (ROOT / "projects", ROOT / "example")
        for folder in sorted(parent.iterdir())
        if folder.is_dir() and not folder.name.startswith((".", "__"))
    ]
    assert len(folders) > 5
    missing = [str(f.relative_to(ROOT)) for f in folders if not (f / "README.md").is_file()]
    assert not missing, f"folders without a README.md: {missing}"
