"""Every document the repository refers to is in the repository.

A fresh clone has only its own files: no design notes beside it. So no file may cite the notes
the project was built from (outside references), and every relative Markdown link and every
mention of a file under `docs/` (with its optional `§3.4` sections or `#anchor`) must resolve to a file,
a numbered heading or a heading anchor that exists. The authors' fixtures
(`../shared/fixtures/originals/`) stay outside on purpose and are not documents.
"""
import re
import subprocess
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUFFIXES = {".py", ".md", ".sh"}

# The notes outside the repository: `NAME.md`, "NAME 3.4", "NAME section 3", "NAME's", and the folder.
OUTSIDE = re.compile(
    r"\b(?:DESIGN|STYLE|ORIGINALS|DATASETS|ORIGINAL_DATA)(?:\.md\b|'s\b|\s+(?:section\s+|§\s*)?\d)"
    r"|shared/docs\b"
)

LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
MENTION = re.compile(r"(?<![\w/.-])(docs/[\w.-]+\.md)(#[\w-]+)?((?:,?\s*§\s*\d+(?:\.\d+)*)*)")
SECTION = re.compile(r"§\s*(\d+(?:\.\d+)*)")


def repo_files() -> list[Path]:
    """Tracked files and untracked ones git does not ignore: what a commit would put in a clone."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                             capture_output=True, text=True, check=True, timeout=60).stdout
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.SubprocessError):  # not a git checkout: walk the tree
        names = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file()]
    files = []
    for name in names:
        parts = Path(name).parts
        if parts and parts[0] in {".venv", ".git"} or Path(name).suffix not in SUFFIXES:
            continue
        if (REPO / name).is_file():
            files.append(REPO / name)
    return sorted(files)


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def headings(path: Path) -> list[str]:
    """Markdown headings outside code fences."""
    found, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            found.append(m.group(1))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen, result = Counter(), set()
    for h in headings(path):
        s = slug(h)
        result.add(s if not seen[s] else f"{s}-{seen[s]}")
        seen[s] += 1
    return result


def sections(path: Path) -> set[str]:
    """Section numbers of numbered headings ("## 3. Pipeline", "### 3.4 Matching")."""
    return {m.group(1) for h in headings(path) if (m := re.match(r"(\d+(?:\.\d+)*)\.?\s", h))}


def test_the_document_checks_themselves():
    assert slug("3.4 Matching") == "34-matching"
    assert slug("Architectures: `build_model(arch=\"ws\")`") == "architectures-build_modelarchws"
    assert slug("1. The authors' preprocessed files") == "1-the-authors-preprocessed-files"
    for text in ("DESIGN.md 3.7", "see DESIGN 3.4", "DESIGN's 0.57", "ORIGINALS.md section 1", "ORIGINAL_DATA.md",
                 "`../shared/docs/DATASETS.md`", "STYLE.md", "DATASETS.md's task 8"):
        assert OUTSIDE.search(text), text
    for text in ("../shared/fixtures/originals/", "docs/originals.md §4", "a DESIGN choice", "weightsep.originals"):
        assert not OUTSIDE.search(text), text
    m = MENTION.search("(docs/originals.md §1.1, §3.2)")
    assert m.group(1) == "docs/originals.md" and SECTION.findall(m.group(3)) == ["1.1", "3.2"]


def test_no_file_refers_to_documents_outside_the_repository():
    bad = []
    for path in repo_files():
        if path == Path(__file__).resolve():
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if m := OUTSIDE.search(line):
                bad.append(f"{rel(path)}:{i}: {m.group(0)!r} in {line.strip()[:100]!r}")
    assert not bad, "references to documents outside the repository (use docs/algorithms.md, docs/originals.md, " \
                    "docs/datasets.md):\n" + "\n".join(bad)


def test_relative_markdown_links_resolve():
    bad = []
    for path in repo_files():
        if path.suffix != ".md":
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for target in LINK.findall(line):
                if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                    continue
                file_part, _, anchor = target.partition("#")
                dest = (path.parent / file_part).resolve() if file_part else path
                if not dest.exists() or REPO not in (dest, *dest.parents):
                    bad.append(f"{rel(path)}:{i}: {target} (no such file in the repository)")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    bad.append(f"{rel(path)}:{i}: {target} (no heading with anchor #{anchor} in {rel(dest)})")
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_docs_mentions_name_existing_files_sections_and_anchors():
    bad = []
    for path in repo_files():
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for m in MENTION.finditer(line):
                name, anchor, numbers = m.group(1), m.group(2), SECTION.findall(m.group(3))
                dest = REPO / name
                if not dest.is_file():
                    bad.append(f"{rel(path)}:{i}: {name} does not exist")
                    continue
                if anchor and anchor[1:] not in anchors(dest):
                    bad.append(f"{rel(path)}:{i}: {name}{anchor}: no such heading anchor")
                bad += [f"{rel(path)}:{i}: {name} §{n}: no heading numbered {n}"
                        for n in numbers if n not in sections(dest)]
    assert not bad, "broken docs/ references:\n" + "\n".join(bad)
