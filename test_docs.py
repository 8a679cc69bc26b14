"""The documentation's examples are tests: every ```python block of README.md and docs/*.md runs.

Conventions (also in docs/development.md):

- Each ```python block is a whole script. It is written to a file in a fresh temporary
  directory, which is also its working directory, and run with this Python; it must exit 0
  within the timeout. The file is named by the block's first line when that is a comment
  like ``# name.py: ...`` (the name shows in journal keys), else ``example.py``.
- Output: comment lines at the end of a block, after a line ``# prints:``, are what it
  prints; each must appear in stdout, in this order, as a whole line (``...`` in a line
  matches any text). Lines after ``# prints under mpiexec -n 3:`` are checked in the MPI run.
- A block whose first line is a comment that mentions ``mpiexec`` is also run under
  ``mpiexec -n 3``.
- A block opened as ```python no-run is not run. Use it only for a block that shows an
  error on purpose.

Every link to a file of the repository, and every #anchor, must resolve, and the README
stays under 30 KB.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import pytest

HERE = pathlib.Path(__file__).resolve().parent
DOCS = [HERE / "README.md", *sorted((HERE / "docs").glob("*.md"))]
TIMEOUT = 120  # seconds per run; a hang fails the test instead of stalling the suite
MPI_RANKS = 3
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>.*)$")


@dataclass
class Block:
    path: pathlib.Path
    line: int  # the line of the first line of code, 1-based
    info: str  # what follows the opening ``` (e.g. "python no-run")
    code: str
    prints: list[str] = field(default_factory=list)
    prints_mpi: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(HERE)}:{self.line}"

    @property
    def first_comment(self) -> str:
        first = self.code.lstrip("\n").split("\n", 1)[0]
        return first if first.startswith("#") else ""

    @property
    def filename(self) -> str:
        named = re.match(r"#\s*([A-Za-z_][A-Za-z0-9_]*\.py)\b", self.first_comment)
        return named.group(1) if named else "example.py"

    @property
    def under_mpi(self) -> bool:
        return "mpiexec" in self.first_comment


def fenced_blocks(path: pathlib.Path) -> list[Block]:
    """Every fenced code block of a Markdown file (any language), with its first line."""
    blocks, lines, i = [], path.read_text(encoding="utf-8").split("\n"), 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, start, body = len(opening["indent"]), i + 1, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path.name}:{start}: a code block that is never closed")
        blocks.append(Block(path, start + 1, opening["info"].strip(), "\n".join(body) + "\n"))
        i += 1
    return blocks


def shown_output(block: Block) -> None:
    """Fill block.prints and block.prints_mpi from the trailing ``# prints:`` comments."""
    target = None
    for line in block.code.split("\n"):
        stripped = line.strip()
        if stripped == "# prints:":
            target = block.prints
        elif re.fullmatch(r"# prints under mpiexec -n \d+:", stripped):
            if stripped != f"# prints under mpiexec -n {MPI_RANKS}:":
                raise AssertionError(f"{block.where}: the MPI run uses -n {MPI_RANKS}: {stripped!r}")
            target = block.prints_mpi
        elif target is not None:
            if not (line.startswith("# ") or line == "#" or line == ""):
                raise AssertionError(f"{block.where}: code after '# prints:': {line!r}")
            if line:
                target.append(line[2:])


def python_blocks() -> list[Block]:
    blocks = []
    for path in DOCS:
        for block in fenced_blocks(path):
            words = block.info.split()
            if words[:1] == ["python"] and "no-run" not in words:
                shown_output(block)
                blocks.append(block)
    return blocks


BLOCKS = python_blocks()


def run(command: list[str], cwd: str) -> tuple[int | None, str, str]:
    """Run a command in its own process group; on timeout kill the group (mpiexec's ranks too)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("BSB_IGNORE_PARALLEL", None)
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=TIMEOUT)
        return process.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        return None, out, err


def check(block: Block, command: list[str], shown: list[str], how: str) -> None:
    with tempfile.TemporaryDirectory(prefix="bsb_mini_docs_") as folder:
        script = pathlib.Path(folder, block.filename)
        script.write_text(block.code, encoding="utf-8")
        status, out, err = run([*command, str(script)], folder)
    report = (f"{block.where} ({how}; line N of {block.filename} is line {block.line} + N - 1 of "
              f"{block.path.name}):\n--- stdout ---\n{out}--- stderr ---\n{err}")
    if status is None:
        pytest.fail(f"{report}\ndid not finish within {TIMEOUT} s", pytrace=False)
    if status != 0:
        pytest.fail(f"{report}\nexited with status {status}", pytrace=False)
    missing = missing_lines(shown, out.split("\n"))
    if missing:
        pytest.fail(f"{report}\ndoes not print, in order, the line shown as\n    {missing}", pytrace=False)


def missing_lines(shown: list[str], printed: list[str]) -> str | None:
    """The first shown line not printed after the ones before it (``...`` matches anything)."""
    at = 0
    for expected in shown:
        pattern = re.compile(".*".join(re.escape(part) for part in expected.rstrip().split("...")))
        while at < len(printed) and not pattern.fullmatch(printed[at].rstrip()):
            at += 1
        if at == len(printed):
            return expected
        at += 1
    return None


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_example_runs(block: Block) -> None:
    check(block, [sys.executable], block.prints, "python")


MPI_BLOCKS = [block for block in BLOCKS if block.under_mpi]


@pytest.mark.parametrize("block", MPI_BLOCKS, ids=[block.where for block in MPI_BLOCKS])
def test_example_runs_under_mpiexec(block: Block) -> None:
    beside_python = pathlib.Path(sys.executable).with_name("mpiexec")  # the mpich wheel's, in a venv
    mpiexec = str(beside_python) if beside_python.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("mpiexec is not on PATH (pip install '.[parallel,mpich]' provides it); "
                    "test_example_runs ran this block serially")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install '.[parallel,mpich]'); the MPI guard would refuse")
    check(block, [mpiexec, "-n", str(MPI_RANKS), sys.executable], block.prints_mpi, f"mpiexec -n {MPI_RANKS}")


def test_the_examples_are_found() -> None:
    # A fence typo (```py, ```Python) would silently drop examples from these tests.
    for path in DOCS:
        for block in fenced_blocks(path):
            language = block.info.split()[:1]
            assert language in ([], ["python"], ["bash"]), f"{block.where}: fence ```{block.info}"
    assert len(BLOCKS) >= 10 and MPI_BLOCKS


def test_mpi_examples_say_how_to_run_them() -> None:
    for block in MPI_BLOCKS:
        assert re.match(rf"# {re.escape(block.filename)}: run it as python {re.escape(block.filename)} "
                        rf"or mpiexec -n \d+ python {re.escape(block.filename)}$", block.first_comment), block.where


def prose(path: pathlib.Path) -> str:
    """A Markdown file without its fenced code blocks."""
    kept, in_code = [], False
    for line in path.read_text(encoding="utf-8").split("\n"):
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code:
            kept.append(line)
    return "\n".join(kept)


def anchors(path: pathlib.Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings."""
    seen: dict[str, int] = {}
    for line in prose(path).split("\n"):
        if not re.match(r"#{1,6} ", line):
            continue
        text = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


def test_links_resolve() -> None:
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(path)):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            if not linked.exists():
                broken.append(f"{path.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_readme_stays_short() -> None:
    size = len((HERE / "README.md").read_bytes())
    assert size <= 30 * 1024, f"README.md is {size:,} bytes: move reference material to docs/"


def test_quick_start_commands_are_the_ones_ci_runs() -> None:
    readme = (HERE / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    block = next(b for b in fenced_blocks(HERE / "README.md") if b.code.strip() in quick_start and b.info == "bash")
    assert block.code == ('pip install . && python -m bsb_mini selftest\n'
                          'pip install ".[test,parallel,mpich]" && python -m pytest\n')
    ci = (HERE / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install -q --disable-pip-version-check . && python -m bsb_mini selftest" in ci
