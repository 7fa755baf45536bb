"""The rendered book, opened in headless Chromium.

These tests read the HTML that ``make book`` writes to ``_build/html`` and open
every page listed in ``_toc.yml`` in a real browser (``chromium --headless
--dump-dom``), so that what is checked is the page after its JavaScript ran.
For every page they assert that

* it loaded: it has a ``<main>`` element, an article and a non-empty ``<h1>``;
* it shows every figure: the ``<img>`` elements inside cell outputs that point
  at an image (a ``data:`` URI, or a non-empty file on disk) are as many as the
  image outputs of the executed notebook that jupyter-book keeps in
  ``_build/jupyter_execute/<page>.ipynb``;
* every local ``<img>`` on it (figures in ``_images/``, logos) is a file that
  exists and is not empty, and PNG files start with the PNG signature;
* it shows no error: no traceback output, no stderr output with a traceback,
  and neither "Traceback (most recent call last)" nor "AssertionError" in its
  text; and its executed notebook ran every code cell without an error.

``test_screenshot_introduction`` saves a screenshot of the book's first page to
``_build/screenshots/introduction.png`` for a person to look at.

The tests marked ``book`` FAIL when ``_build/html/index.html`` is missing (run
``make book`` first). Environment variables:

``RESALIGN_BOOK_DIR``
    The book's directory, holding ``_toc.yml`` and ``_build/`` (default: the
    repository root). Used to test a copy of the book built elsewhere.
``RESALIGN_SKIP_BOOK=1``
    Skip the ``book`` tests instead of failing when the book is not built.

The unmarked ``test_checker_*`` tests check the checks themselves on small
hand-written pages; they need neither Chromium nor a built book.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from bs4 import BeautifulSoup, Tag

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_TIMEOUT_S = 120
ERROR_MARKERS = ("Traceback (most recent call last)", "AssertionError")
HIDDEN_OUTPUT_TAGS = {"remove-output", "remove_output", "remove-cell", "remove_cell"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCREENSHOT_SIZE = (1280, 2400)
# A screenshot of an empty white page of that size is about 14 KB.
SCREENSHOT_MIN_BYTES = 50_000


# --------------------------------------------------------------------- helpers
def book_dir() -> Path:
    """The book's directory: ``$RESALIGN_BOOK_DIR`` or the repository root.

    Returns
    -------
    Path
        The directory holding ``_toc.yml`` and ``_build/``.
    """
    return Path(os.environ.get("RESALIGN_BOOK_DIR") or REPO).resolve()


def chromium_binary() -> str:
    """The path of a Chromium (or Chrome) executable.

    Returns
    -------
    str
        The first of ``chromium``, ``chromium-browser``, ``google-chrome``
        found on ``PATH``.

    Raises
    ------
    pytest.fail.Exception
        When none is installed.
    """
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)}); "
        "`make system-deps` installs it"
    )


def _run_chromium(args: list[str], timeout: float = CHROMIUM_TIMEOUT_S) -> str:
    """Run headless Chromium with a throwaway profile and return its stdout.

    Chromium's stderr is mostly noise (D-Bus, GPU, crash reporter) and is shown
    only when it exits with an error.

    Parameters
    ----------
    args : list of str
        The arguments after the common ones (the URL last).
    timeout : float, optional
        Seconds before Chromium and its child processes are killed.

    Returns
    -------
    str
        What Chromium wrote to stdout.
    """
    with tempfile.TemporaryDirectory(
        prefix="resalign-chromium-", ignore_cleanup_errors=True
    ) as profile:
        cmd = [
            chromium_binary(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            *args,
        ]
        # A session of its own, so that a timeout kills the renderer and GPU
        # processes too (they would otherwise keep stdout open).
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"Chromium took over {timeout:.0f} s: {' '.join(cmd)}")
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-15:]
        pytest.fail(
            f"Chromium exited with {proc.returncode}: {' '.join(cmd)}\n"
            + "\n".join(tail)
        )
    return out.decode(errors="replace")


def dump_dom(path: Path) -> str:
    """The DOM of a local HTML page after its scripts ran.

    Parameters
    ----------
    path : Path
        The HTML file.

    Returns
    -------
    str
        The serialised DOM (``chromium --dump-dom``).
    """
    dom = _run_chromium(["--dump-dom", path.resolve().as_uri()])
    assert dom.strip(), f"Chromium returned an empty DOM for {path}"
    return dom


def screenshot(path: Path, out: Path, size: tuple[int, int] = SCREENSHOT_SIZE) -> Path:
    """Save a PNG screenshot of a local HTML page.

    Parameters
    ----------
    path : Path
        The HTML file.
    out : Path
        Where to write the PNG (its folder is created).
    size : tuple of int, optional
        The window's width and height in pixels.

    Returns
    -------
    Path
        ``out``.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    _run_chromium(
        [
            f"--screenshot={out}",
            f"--window-size={size[0]},{size[1]}",
            path.resolve().as_uri(),
        ]
    )
    return out


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file, read from its header.

    Parameters
    ----------
    path : Path
        The PNG file.

    Returns
    -------
    tuple of int
        ``(width, height)`` in pixels.
    """
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", f"{path}: not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def toc_pages(book: Path) -> list[str]:
    """The pages that ``_toc.yml`` lists, in order, without suffix.

    Parameters
    ----------
    book : Path
        The book's directory.

    Returns
    -------
    list of str
        Paths relative to ``book`` such as ``chapters/01_introduction``;
        empty when there is no ``_toc.yml``.
    """
    toc_file = book / "_toc.yml"
    if not toc_file.is_file():
        return []
    toc = yaml.safe_load(toc_file.read_text()) or {}
    pages: list[str] = []

    def add(entry: str) -> None:
        name = str(Path(entry).with_suffix("")) if Path(entry).suffix else entry
        if name not in pages:
            pages.append(name)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    add(node[key])
            if isinstance(node.get("glob"), str):
                for src in sorted(book.glob(node["glob"] + ".*")):
                    if src.suffix in (".ipynb", ".md", ".rst"):
                        add(src.relative_to(book).as_posix())
            for value in node.values():
                if isinstance(value, (dict, list)):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return pages


def _tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def expected_images(notebook: dict) -> int:
    """How many image outputs an executed notebook shows.

    Parameters
    ----------
    notebook : dict
        The notebook, as JSON.

    Returns
    -------
    int
        The outputs with an ``image/*`` representation, in code cells whose
        outputs are not removed by a tag (glued outputs, whose keys are
        prefixed ``application/papermill.record/``, do not count).
    """
    count = 0
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code" or _tags(cell) & HIDDEN_OUTPUT_TAGS:
            continue
        for output in cell.get("outputs", []):
            if any(key.startswith("image/") for key in output.get("data", {})):
                count += 1
    return count


def execution_problems(notebook: dict) -> list[str]:
    """Code cells of an executed notebook that did not run or raised.

    Parameters
    ----------
    notebook : dict
        The executed notebook, as JSON.

    Returns
    -------
    list of str
        One line per problem; empty when every code cell ran without error.
    """
    problems = []
    for i, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell.get("source", ""))
        if source.strip() and cell.get("execution_count") is None:
            problems.append(f"cell {i} was not executed: {source[:60]!r}")
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                problems.append(
                    f"cell {i} raised {output.get('ename')}: {output.get('evalue')}"
                )
    return problems


def _local_file(src: str, page: Path) -> Path | None:
    """The file an ``<img src>`` points at, or None for a remote or data URI."""
    parts = urlsplit(src)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme or src.startswith("//"):
        return None
    return (page.parent / unquote(parts.path)).resolve()


def _image_problem(src: str, page: Path) -> str | None:
    """Why an ``<img src>`` shows nothing, or None when it points at an image."""
    if not src.strip():
        return "an <img> without src"
    if src.startswith("data:"):
        header, _, payload = src.partition(",")
        ok = header.startswith("data:image/") and payload.strip()
        return None if ok else f"an empty or non-image data URI {src[:40]!r}"
    file = _local_file(src, page)
    if file is None:
        return None  # remote; nothing to check offline
    if not file.is_file():
        return f"{src} does not exist ({file})"
    if file.stat().st_size == 0:
        return f"{src} is empty ({file})"
    if file.suffix.lower() == ".png" and file.read_bytes()[:8] != PNG_SIGNATURE:
        return f"{src} is not a PNG file ({file})"
    return None


def page_problems(dom: str, page: Path, images: int) -> list[str]:
    """What is wrong with a rendered page.

    Parameters
    ----------
    dom : str
        The page's DOM after its scripts ran.
    page : Path
        The page's HTML file (relative ``src`` are resolved against it).
    images : int
        How many images its cell outputs must show.

    Returns
    -------
    list of str
        One line per problem; empty for a good page.
    """
    soup = BeautifulSoup(dom, "html.parser")
    problems: list[str] = []
    main = soup.find("main") or soup.find(attrs={"role": "main"})
    article = None
    if isinstance(main, Tag):
        article = main.find("article") or main.find(attrs={"role": "main"})
    if not isinstance(article, Tag):
        return ["no <main> element with an article: the page did not load"]
    h1 = article.find("h1")
    if not isinstance(h1, Tag) or not h1.get_text(strip=True):
        problems.append("no <h1> title in the article")

    shown = 0
    for img in article.select("div.cell_output img"):
        why = _image_problem(str(img.get("src") or ""), page)
        if why is None:
            shown += 1
        else:
            problems.append(f"cell output image: {why}")
    if shown != images:
        problems.append(
            f"{shown} images in cell outputs, but the executed notebook has "
            f"{images} image outputs"
        )
    for img in soup.find_all("img"):
        src = str(img.get("src") or "")
        if src and not src.startswith("data:") and _local_file(src, page):
            why = _image_problem(src, page)
            if why is not None and not img.find_parent("div", class_="cell_output"):
                problems.append(f"image: {why}")

    for node in soup.select(".traceback"):
        first = node.get_text(" ", strip=True)[:200]
        problems.append(f"a traceback is shown: {first}")
    for node in soup.select(".output.stderr"):
        if "Traceback" in node.get_text():
            problems.append("a stderr output shows a traceback")
    for node in soup(["script", "style", "noscript", "template"]):
        node.decompose()
    text = soup.get_text(" ")
    for marker in ERROR_MARKERS:
        if marker in text:
            problems.append(f"the page's text contains {marker!r}")
    return problems


def built_html() -> Path:
    """``_build/html`` of the book; fails (or skips) the test when it is missing.

    Returns
    -------
    Path
        The folder holding ``index.html``.
    """
    html = book_dir() / "_build" / "html"
    if not (html / "index.html").is_file():
        if os.environ.get("RESALIGN_SKIP_BOOK") == "1":
            pytest.skip("the book is not built and RESALIGN_SKIP_BOOK=1")
        pytest.fail(
            f"{html / 'index.html'} is missing: run `make book` first "
            "(or set RESALIGN_SKIP_BOOK=1 to skip the rendered-book tests)",
            pytrace=False,
        )
    return html


PAGES = toc_pages(book_dir())


# ----------------------------------------------------------------- book tests
@pytest.mark.book
def test_toc_lists_pages() -> None:
    """``_toc.yml`` exists and lists at least one page."""
    assert PAGES, f"no pages found in {book_dir() / '_toc.yml'}"


@pytest.mark.book
@pytest.mark.parametrize("name", PAGES)
def test_page_renders(name: str) -> None:
    """The page loads in Chromium, shows all its figures and no error."""
    html_dir = built_html()
    page = html_dir / f"{name}.html"
    assert page.is_file(), f"{page} is missing: the book build skipped {name}"
    executed = book_dir() / "_build" / "jupyter_execute" / f"{name}.ipynb"
    problems: list[str] = []
    if executed.is_file():
        notebook = json.loads(executed.read_text())
        problems += [f"{executed.name}: {p}" for p in execution_problems(notebook)]
        images = expected_images(notebook)
    else:
        source = book_dir() / f"{name}.ipynb"
        assert not source.is_file(), (
            f"{executed} is missing: was {source.name} executed by the build?"
        )
        images = 0  # a plain Markdown page has no outputs
    problems += page_problems(dump_dom(page), page, images)
    assert not problems, f"{page}:\n  " + "\n  ".join(problems)


@pytest.mark.book
def test_screenshot_introduction() -> None:
    """A screenshot of the book's first page, for a person to look at."""
    html_dir = built_html()
    assert PAGES, f"no pages found in {book_dir() / '_toc.yml'}"
    page = html_dir / f"{PAGES[0]}.html"
    assert page.is_file(), f"{page} is missing"
    out = book_dir() / "_build" / "screenshots" / "introduction.png"
    screenshot(page, out)
    assert out.is_file(), f"Chromium wrote no screenshot to {out}"
    size = out.stat().st_size
    assert size > SCREENSHOT_MIN_BYTES, f"{out} is {size} bytes: a blank page?"
    assert png_size(out) == SCREENSHOT_SIZE


# ------------------------------------------- the checks, on hand-written pages
GOOD_PAGE = """<html><body><main role="main"><article class="bd-article">
<h1>A chapter</h1>
<div class="cell_output"><figure><img src="../_images/fig.png"></figure></div>
<div class="cell_output"><img src="data:image/png;base64,iVBORw0KGgo="></div>
<div class="cell_output"><div class="output stream"><pre>done</pre></div></div>
<img src="../_static/logo.svg">
</article></main><script>// Traceback (most recent call last)</script></body></html>
"""

BAD_PAGE = """<html><body><main role="main"><article class="bd-article">
<div class="cell_output"><img src="../_images/gone.png"></div>
<div class="cell_output"><img src="data:image/png;base64,"></div>
<div class="cell_output"><div class="output stderr"><pre>Traceback: x</pre></div></div>
<div class="cell_output"><div class="output traceback"><pre>
AssertionError: not reproduced</pre></div></div>
<img src="../_images/empty.png">
</article></main></body></html>
"""


@pytest.fixture()
def fake_book(tmp_path: Path) -> Path:
    """A built-book layout with one figure, one empty image and a logo."""
    (tmp_path / "_images").mkdir()
    (tmp_path / "_images" / "fig.png").write_bytes(PNG_SIGNATURE + b"\0" * 16)
    (tmp_path / "_images" / "empty.png").write_bytes(b"")
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "logo.svg").write_text("<svg/>")
    (tmp_path / "chapters").mkdir()
    return tmp_path / "chapters" / "page.html"


def test_checker_accepts_a_good_page(fake_book: Path) -> None:
    assert page_problems(GOOD_PAGE, fake_book, images=2) == []
    assert any(
        "has 3 image outputs" in p for p in page_problems(GOOD_PAGE, fake_book, 3)
    )


def test_checker_reports_a_broken_page(fake_book: Path) -> None:
    problems = "\n".join(page_problems(BAD_PAGE, fake_book, images=2))
    for expected in (
        "no <h1>",
        "gone.png does not exist",
        "empty or non-image data URI",
        "0 images in cell outputs",
        "empty.png is empty",
        "a traceback is shown",
        "stderr output shows a traceback",
        "contains 'AssertionError'",
    ):
        assert expected in problems
    assert page_problems("<html><body>404</body></html>", fake_book, 0) == [
        "no <main> element with an article: the page did not load"
    ]


def test_checker_reads_notebooks(tmp_path: Path) -> None:
    def cell(outputs: list, tags: tuple = (), count: int | None = 1) -> dict:
        meta = {"tags": list(tags)}
        return {
            "cell_type": "code",
            "source": "x",
            "metadata": meta,
            "execution_count": count,
            "outputs": outputs,
        }

    png = {"output_type": "display_data", "data": {"image/png": "", "text/plain": ""}}
    glued = {
        "output_type": "display_data",
        "data": {"application/papermill.record/image/png": ""},
    }
    error = {"output_type": "error", "ename": "AssertionError", "evalue": "no"}
    notebook = {
        "cells": [
            cell([png, png]),
            cell([png], tags=("remove-output",)),
            cell([glued]),
        ]
    }
    assert expected_images(notebook) == 2
    assert execution_problems(notebook) == []
    notebook["cells"] += [cell([error]), cell([], count=None)]
    assert len(execution_problems(notebook)) == 2

    (tmp_path / "chapters").mkdir()
    (tmp_path / "chapters" / "b.md").write_text("# b")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: chapters/a\nparts:\n"
        "- chapters:\n  - file: chapters/a.ipynb\n  - glob: chapters/b\n"
    )
    assert toc_pages(tmp_path) == ["chapters/a", "chapters/b"]
    assert toc_pages(tmp_path / "nowhere") == []
