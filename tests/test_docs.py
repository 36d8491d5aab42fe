"""The documentation stays true to the tree: short README, live links, real citations.

Checks, on text only (nothing here imports pprm):

* README.md has at most 300 lines and keeps the setup and test commands CI runs;
* every relative link in README.md and docs/*.md points to an existing file, and a
  ``#anchor`` to a heading of that file;
* every "docs/DESIGN.md section N" citation (also "sections 3 and 9", "sections 2-4, 9",
  "section 4, trap 2") in the code, tests and documents names a section ``## N.`` of
  docs/DESIGN.md (and a numbered trap of section 4);
* every "§N" / "§N.M" reference in docs/THREAT_MODEL.md names one of its headings;
* every repository path (``tests/...py``, ``pprm/...``, ``bench/...``) and every test
  function named in the documents exists;
* no document speaks of issue numbers, work items, a roadmap or what "landed".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
DESIGN = DOCS / "DESIGN.md"
THREAT_MODEL = DOCS / "THREAT_MODEL.md"
CODE_DIRS = ("pprm", "tests", "bench", "examples", "fuzz", "native")
CODE_SUFFIXES = {".py", ".c", ".h", ".md", ".toml", ".txt", ".cfg"}

SETUP_COMMAND = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev,face,cluster]"'
TEST_COMMAND = "python -m pytest -q"


def _documents() -> list[Path]:
    """README.md, docs/*.md and bench/README.md: the prose a reader follows."""
    return [README, *sorted(DOCS.glob("*.md")), ROOT / "bench" / "README.md"]


def _linked_documents() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _without_code_blocks(text: str) -> str:
    """Markdown with fenced code blocks blanked out (line numbers kept)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _without_code_blocks(path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path) -> Iterator[tuple[int, str]]:
    text = _without_code_blocks(path.read_text(encoding="utf-8"))
    for no, line in enumerate(text.splitlines(), 1):
        for m in re.finditer(r"\[[^\]]*\]\(([^)\s]+)\)", line):
            yield no, m.group(1)


def _code_files() -> Iterator[Path]:
    for d in CODE_DIRS:
        base = ROOT / d
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*")):
            if p.is_file() and p.suffix in CODE_SUFFIXES and "__pycache__" not in p.parts:
                yield p


def _design_sections() -> dict[int, str]:
    """Section number -> its text, for every ``## N. Title`` of docs/DESIGN.md."""
    text = DESIGN.read_text(encoding="utf-8")
    parts = re.split(r"^## (\d+)\. .*$", text, flags=re.M)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


def _numbers(spec: str) -> list[int]:
    """'3 and 9' -> [3, 9]; '2-4, 9' -> [2, 3, 4, 9]."""
    out: list[int] = []
    for a, b in re.findall(r"(\d+)(?:\s*[-–]\s*(\d+))?", spec):
        out.extend(range(int(a), int(b or a) + 1))
    return out


# "docs/DESIGN.md section 4", "docs/DESIGN.md sections 2-4 and 9", "[docs/DESIGN.md](docs/DESIGN.md) section 2",
# "docs/DESIGN.md section 4, trap 2", once comment markers and line breaks are folded into spaces.
_CITATION = re.compile(
    r"DESIGN\.md(?:\]\([^)]*\))?\)?\s+sections?\s+"
    r"(?P<spec>\d+(?:\s*(?:[-–]|,|and|,\s*and)\s*\d+)*)"
    r"(?:,\s*traps?\s+(?P<trap>\d+(?:\s*(?:and|,)\s*\d+)*))?"
)


def _fold(text: str) -> str:
    """Join lines, dropping comment markers and indentation, so a citation may span a line break."""
    return re.sub(r"\s*\n\s*(?:#+|//|\*|/\*)?\s*", " ", text)


def _citations() -> Iterator[tuple[str, str, list[int], list[int]]]:
    files = [*_code_files(), README, *sorted(DOCS.glob("*.md"))]
    for path in files:
        folded = _fold(path.read_text(encoding="utf-8", errors="replace"))
        for m in _CITATION.finditer(folded):
            traps = _numbers(m.group("trap")) if m.group("trap") else []
            yield _rel(path), m.group(0), _numbers(m.group("spec")), traps


def test_readme_is_short_and_keeps_the_ci_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300, f"README.md has {len(text.splitlines())} lines (at most 300)"
    lines = {line.strip() for line in text.splitlines()}
    assert SETUP_COMMAND in lines, "README.md lost the setup command CI runs"
    assert TEST_COMMAND in lines, "README.md lost the test command CI runs"


def test_readme_maps_the_packages_near_the_top() -> None:
    text = README.read_text(encoding="utf-8")
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings and "map" in headings[0].lower(), "the map of the code must be the README's first section"
    for wanted in ("pprm/matching/sealed.py", "pprm/matching/blind.py", "pprm/matching/blind_client.py",
                   "pprm/protocol/envelope.py", "pprm/node/keyservice.py", "pprm/bench/", "pprm/cli/",
                   "pprm/face/", "native/"):
        assert wanted in text, f"the README's map does not say where {wanted} is"


@pytest.mark.parametrize("doc", _linked_documents(), ids=_rel)
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for no, target in _links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            broken.append(f"{_rel(doc)}:{no}: {target} (no such file)")
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{_rel(doc)}:{no}: {target} (no heading #{anchor})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_design_has_sections_one_to_nine_in_order() -> None:
    text = DESIGN.read_text(encoding="utf-8")
    numbers = [int(n) for n in re.findall(r"^## (\d+)\. ", text, flags=re.M)]
    assert numbers[:9] == list(range(1, 10)), f"docs/DESIGN.md sections are {numbers}"
    assert numbers == list(range(1, len(numbers) + 1)), f"docs/DESIGN.md sections are {numbers}"


def test_every_design_citation_names_an_existing_section() -> None:
    sections = _design_sections()
    trap_items = set(int(n) for n in re.findall(r"^(\d+)\. \*\*", sections.get(4, ""), flags=re.M))
    found, bad = 0, []
    for where, text, numbers, traps in _citations():
        found += 1
        for n in numbers:
            if n not in sections:
                bad.append(f"{where}: {text!r} cites section {n}, which docs/DESIGN.md does not have")
        for t in traps:
            if numbers != [4] or t not in trap_items:
                bad.append(f"{where}: {text!r} cites trap {t}, not a numbered trap of section 4")
    assert found >= 20, f"only {found} citations found: the pattern no longer matches the code's comments"
    assert not bad, "\n".join(bad)


def test_design_citation_pattern_reads_every_form() -> None:
    def parse(text: str) -> list[tuple[list[int], list[int]]]:
        return [(_numbers(m.group("spec")), _numbers(m.group("trap")) if m.group("trap") else [])
                for m in _CITATION.finditer(_fold(text))]

    assert parse("(docs/DESIGN.md section 4, trap 3)") == [([4], [3])]
    assert parse("(docs/DESIGN.md\n    # sections 3 and 9)") == [([3, 9], [])]
    assert parse("docs/DESIGN.md sections 2-4, 9;") == [([2, 3, 4, 9], [])]
    assert parse("docs/DESIGN.md\nsections 2-4 and 9") == [([2, 3, 4, 9], [])]
    assert parse("[docs/DESIGN.md](docs/DESIGN.md) section 12") == [([12], [])]


def test_threat_model_section_references_exist() -> None:
    text = THREAT_MODEL.read_text(encoding="utf-8")
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, flags=re.M))
    refs = set(re.findall(r"§(\d+(?:\.\d+)?)", text))
    for doc in DOCS.glob("*.md"):
        refs |= set(re.findall(r"THREAT_MODEL(?:\.md)?(?:\]\([^)]*\))?\s+§(\d+(?:\.\d+)?)", doc.read_text("utf-8")))
    missing = sorted(r for r in refs if r not in headings)
    assert not missing, f"docs cite THREAT_MODEL §{missing}, which has no such heading"


_REPO_PATH = re.compile(r"(?<![\w/.-])((?:pprm|tests|bench|examples|fuzz|native)/[\w./-]*[\w/])")


@pytest.mark.parametrize("doc", _documents(), ids=_rel)
def test_repository_paths_in_documents_exist(doc: Path) -> None:
    missing = []
    for no, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        for m in _REPO_PATH.finditer(line):
            path = m.group(1).split("::")[0]
            if "*" in path or "<" in path:
                continue
            if not (ROOT / path).exists():
                missing.append(f"{_rel(doc)}:{no}: {path}")
    assert not missing, "documents name paths that do not exist:\n" + "\n".join(missing)


def test_tests_paths_in_documents_exist() -> None:
    missing = []
    for doc in _documents():
        for path in re.findall(r"tests/[\w/]+\.py", doc.read_text(encoding="utf-8")):
            if not (ROOT / path).is_file():
                missing.append(f"{_rel(doc)}: {path}")
    assert not missing, "\n".join(missing)


def test_module_names_in_the_readme_exist() -> None:
    names = {p.name for d in CODE_DIRS for p in (ROOT / d).rglob("*") if p.is_file()}
    text = README.read_text(encoding="utf-8")
    unknown = sorted({n for n in re.findall(r"(?<![\w/.-])(\w+\.(?:py|c))\b", text) if n not in names})
    assert not unknown, f"README.md names files that exist nowhere in the tree: {unknown}"


def test_test_functions_named_in_documents_exist() -> None:
    defined = set()
    for d in ("tests", "bench"):
        for p in (ROOT / d).rglob("*.py"):
            defined.update(re.findall(r"^\s*(?:async\s+)?def (test_\w+)", p.read_text(encoding="utf-8"), flags=re.M))
    missing = []
    for doc in _documents():
        for name in re.findall(r"`(test_\w+)(?:`|\[)", doc.read_text(encoding="utf-8")):
            if name.endswith("_"):
                continue
            if name not in defined:
                missing.append(f"{_rel(doc)}: {name}")
    assert not missing, "documents name tests that do not exist:\n" + "\n".join(sorted(set(missing)))


_FORBIDDEN = re.compile(r"\bissues?\s+#?\d+|\bwork items?\b|\broadmap\b|\blanded\b", re.I)


@pytest.mark.parametrize("doc", _documents(), ids=_rel)
def test_documents_describe_the_software_not_its_history(doc: Path) -> None:
    hits = [f"{_rel(doc)}:{no}: {line.strip()}"
            for no, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1)
            if _FORBIDDEN.search(line)]
    assert not hits, "\n".join(hits)
