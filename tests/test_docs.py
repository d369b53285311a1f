"""The README and docs/*.md (issue 18.7): every docs page is linked from the README, every relative
link and anchor resolves, and every command, target and repository file they name exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`([^`]+)`")
MAKE = re.compile(r"(?:^|[\s;&|(])make ([a-z][a-z0-9-]*)")
PIPELINE_COMMAND = re.compile(r"(?:python -m pipeline|photo-pipeline) ([a-z][a-z0-9-]*)")
# a repository file named in the text: configs/x.yaml, benchmarks/x.py, notebooks/x.ipynb, ...
REPO_FILE = re.compile(r"(?<![\w./-])((?:configs|benchmarks|notebooks|tests|pipeline)/[\w./-]+\.(?:yaml|py|ipynb|j2))")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    found, seen, fenced = set(), {}, False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6} (.+)", line)):
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def _code(page: Path) -> list[tuple[int, str]]:
    """(line number, text) of everything in code: fenced and indented blocks, inline code spans."""
    out, fenced = [], False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif fenced or line.startswith("    ") and not line.lstrip().startswith(("-", "|")):
            out.append((number, line))
        else:
            out += [(number, span) for span in CODE_SPAN.findall(line)]
    return out


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.M))


def _documented_targets() -> set[str]:
    """The targets `make help` lists (a `## ` comment on the rule's line)."""
    return set(re.findall(r"^([a-z][a-z0-9-]*):.*##", (ROOT / "Makefile").read_text(), re.M))


def test_there_are_docs_and_the_readme_links_every_one():
    assert DOCS, "docs/ holds no .md file"
    linked = {(README.parent / target.split("#")[0]).resolve()
              for target in LINK.findall(README.read_text()) if not target.startswith(("http:", "https:", "#"))}
    missing = [d.name for d in DOCS if d.resolve() not in linked]
    assert not missing, f"README.md links no docs page {missing}: add a link under its Documentation section"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves_to_a_file_and_heading(page):
    broken = []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        for target in LINK.findall(line):
            if target.startswith(("http:", "https:", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}:{number}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.name}:{number}: {target}: {dest.name} has no heading #{anchor}")
    assert not broken, "\n".join(broken)


def test_the_slug_is_githubs():
    assert _slug('The real competition (Kaggle "Photo Reconstruction")') == "the-real-competition-kaggle-photo-reconstruction"
    assert _slug("Earlier teams' write-ups") == "earlier-teams-write-ups"
    assert _slug("Pretrained inpainters: LaMa and MI-GAN (`make weights`)") == \
        "pretrained-inpainters-lama-and-mi-gan-make-weights"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_make_target_and_pipeline_command_named_exists(page):
    targets = _make_targets()
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    wrong = []
    for number, code in _code(page):
        wrong += [f"{page.name}:{number}: make {t} (no such Makefile target)"
                  for t in MAKE.findall(code) if t not in targets]
        wrong += [f"{page.name}:{number}: pipeline {c} (no such command)"
                  for c in PIPELINE_COMMAND.findall(code) if c not in commands]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_repository_file_named_exists(page):
    missing = []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        missing += [f"{page.name}:{number}: {f}" for f in REPO_FILE.findall(line)
                    if not (ROOT / f).exists() and not (ROOT / "pipeline" / f).exists()]
    assert not missing, "no such file:\n" + "\n".join(missing)


def test_every_target_make_help_lists_is_documented():
    text = "\n".join(code for page in PAGES for _, code in _code(page))
    named = set(MAKE.findall(text))
    undocumented = sorted(_documented_targets() - named)
    assert not undocumented, (f"make help lists {undocumented}, which neither README.md nor docs/*.md names: "
                              "add it to the README's targets table and to docs/development.md#every-target")


def test_the_readme_leads_with_the_quick_start_and_the_real_competition():
    headings = [line for line in README.read_text().splitlines() if line.startswith("## ")]
    assert headings[:2] == ["## Quick start", '## The real competition (Kaggle "Photo Reconstruction")'], headings
    competition = README.read_text().split(headings[1])[1].split("\n## ")[0]
    # the channel order is settled before anything is trained: its step comes before `make train`
    assert "CHANNELS=bgr" in competition
    assert competition.index("CHANNELS=bgr") < competition.index("make train")
    assert "the reports" not in README.read_text().lower()
