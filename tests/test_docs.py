"""The documentation site: every Python sample on every page runs, prints what it promises,
and the site builds in strict mode (no broken link, anchor or API reference).

A page's fenced ``python`` (or ``py``) blocks are put, in order, into one script whose line
numbers are the page's own, and the script runs in a fresh interpreter whose working
directory is an empty temporary folder (the script sits in it, as a user's script would,
so modules a sample writes there are importable by name). An error's traceback therefore
names the page's file and line. Blocks fenced as ``text``, ``console``, ``pycon`` or
anything else are shown, never run. A ``print(...)  # -> text`` line promises that ``text``
is printed as a whole line, in that order. ResourceWarnings (an unclosed pool or service)
fail the page.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import freshproc

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUNNABLE = {"python", "py", "python3"}
#: Seconds one page's samples may take; a page's samples are meant to take a second or two.
PAGE_TIMEOUT_SECONDS = 90
OPENING_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>.*)$")
PROMISE = re.compile(r"\bprint\(.*\)\s*#\s*->\s?(?P<text>.*?)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    language: str
    #: 1-based line, in the page, of the block's first line of code.
    first_line: int
    lines: tuple[str, ...]

    @property
    def last_line(self) -> int:
        return self.first_line + len(self.lines) - 1


def fenced_blocks(markdown: str) -> list[Block]:
    """Every fenced block (``` or ~~~, indented in a list or an admonition too), in order."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    index = 0
    while index < len(lines):
        opening = OPENING_FENCE.match(lines[index])
        index += 1
        if opening is None:
            continue
        indent, fence = opening["indent"], opening["fence"]
        info = opening["info"].strip().lstrip("{").lstrip(".")
        language = info.split()[0].lower() if info else ""
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        start = index
        while index < len(lines) and not closing.match(lines[index]):
            index += 1
        body = [line.removeprefix(indent) for line in lines[start:index]]
        blocks.append(Block(language, start + 1, tuple(textwrap.dedent("\n".join(body)).split("\n"))))
        index += 1  # past the closing fence
    return blocks


def runnable_blocks(page: Path) -> list[Block]:
    return [block for block in fenced_blocks(page.read_text()) if block.language in RUNNABLE]


def page_script(blocks: list[Block]) -> str:
    """The page's runnable blocks as one script, each at its own line numbers."""
    script: list[str] = []
    for block in blocks:
        script.extend([""] * (block.first_line - 1 - len(script)))
        script.extend(block.lines)
    return "\n".join(script) + "\n"


def promises(blocks: list[Block]) -> list[str]:
    return [match["text"] for block in blocks for line in block.lines if (match := PROMISE.search(line))]


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _page_id(page: Path) -> str:
    return str(page.relative_to(DOCS))


def _failing_block(blocks: list[Block], script: Path, stderr: str) -> str:
    """Where the last traceback line that points into the page's script is."""
    lines = [int(line) for line in re.findall(rf'File "{re.escape(str(script))}", line (\d+)', stderr)]
    if not lines:
        return "the page's samples"
    for block in blocks:
        if block.first_line <= lines[-1] <= block.last_line:
            return f"the block at line {block.first_line - 1} (line {lines[-1]} of the page)"
    return f"line {lines[-1]} of the page"


def test_the_docs_have_pages_with_samples() -> None:
    """The collection below sees the pages, and most of them have samples to run."""
    with_samples = [page for page in pages() if runnable_blocks(page)]
    assert len(with_samples) >= 8, with_samples


def test_fences_are_found_where_markdown_puts_them() -> None:
    """Indented fences (in an admonition), ~~~ fences, info strings and non-Python blocks."""
    markdown = textwrap.dedent(
        """\
        text
        ```python title="a.py"
        a = 1
        ```
        !!! note
            ~~~py
            if a:
                b = 2
            ~~~
        ```pycon
        >>> 1
        ```
        """
    )
    blocks = fenced_blocks(markdown)
    assert [(block.language, block.first_line) for block in blocks] == [("python", 3), ("py", 7), ("pycon", 11)]
    assert blocks[1].lines == ("if a:", "    b = 2")
    script = page_script([block for block in blocks if block.language in RUNNABLE])
    assert script.splitlines()[2] == "a = 1"
    assert script.splitlines()[7] == "    b = 2"


@pytest.mark.parametrize("page", [page for page in pages() if runnable_blocks(page)], ids=_page_id)
def test_the_samples_of_a_page_run(page: Path, tmp_path: Path) -> None:
    """The page's Python blocks run, in order, in one fresh interpreter, in an empty
    folder; they print what their ``# ->`` comments promise; nothing is left unclosed."""
    blocks = runnable_blocks(page)
    script = tmp_path / "docs_page.py"
    script.write_text(page_script(blocks))
    environment = dict(os.environ)
    environment.pop("PYTHONPATH", None)
    completed = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", str(script)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT_SECONDS,
        check=False,
    )
    name = str(page.relative_to(ROOT))
    # The script keeps the page's line numbers, so its tracebacks may name the page instead.
    stderr = completed.stderr.replace(str(script), name)
    assert completed.returncode == 0, f"{name}: {_failing_block(blocks, script, completed.stderr)} failed:\n{stderr}"
    assert "ResourceWarning" not in stderr, f"{name} left something open:\n{stderr}"
    printed = completed.stdout.splitlines()
    position = 0
    for expected in promises(blocks):
        while position < len(printed) and printed[position] != expected:
            position += 1
        assert position < len(printed), f"{page.relative_to(ROOT)}: {expected!r} not printed in order; got {printed}"
        position += 1


def test_every_public_name_is_in_the_api_reference() -> None:
    """Each name in ``freshproc.__all__`` has its entry (``::: freshproc.NAME``)."""
    reference = "\n".join(page.read_text() for page in (DOCS / "reference").rglob("*.md"))
    documented = set(re.findall(r"^:::\s*freshproc\.(\w+)\s*$", reference, flags=re.MULTILINE))
    missing = sorted(set(freshproc.__all__) - documented - {"__version__"})
    assert not missing, f"add `::: freshproc.NAME` for these to docs/reference/api.md: {missing}"


def test_the_home_page_links_every_guide_in_the_nav() -> None:
    """The home page's "Where to go next" names each guide the nav lists (commented-out
    entries, for guides not written yet, excepted)."""
    nav = re.findall(r"^\s*- [^:#]+:\s*(guides/\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.MULTILINE)
    assert nav, "no guide found in the nav of mkdocs.yml"
    index = (DOCS / "index.md").read_text()
    next_steps = index[index.index("## Where to go next") :]
    missing = [guide for guide in nav if f"]({guide})" not in next_steps]
    assert not missing, f"docs/index.md, 'Where to go next', does not link: {missing}"


def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    """``mkdocs build --strict``: a broken link, anchor, nav entry or API reference fails.

    Needs the ``docs`` dependency group (the ``tests`` session installs it); skipped with
    that reason elsewhere, but never on CI."""
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI"):
            pytest.fail("mkdocs is not installed: the tests session must install the docs dependency group")
        pytest.skip("mkdocs is not installed (pip install --group docs)")
    site = tmp_path / "site"
    build = ["mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)]
    completed = subprocess.run(
        [sys.executable, "-m", *build],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert (site / "reference" / "api" / "index.html").exists()
