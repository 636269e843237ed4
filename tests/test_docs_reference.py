"""docs/configuration.md cannot drift from the config dataclasses."""

from pathlib import Path

from ptycho_torch.reference import BEGIN, END, generated_reference

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_configuration_page_matches_dataclasses():
    text = PAGE.read_text()
    generated = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert generated == generated_reference().strip(), (
        "docs/configuration.md is stale: run python -m ptycho_torch.reference --write docs/configuration.md")


DOCS = [*sorted((PAGE.parent).glob("*.md")), PAGE.parents[1] / "README.md", PAGE.parents[1] / "cluster" / "README.md"]


def _flags(program: str) -> set[str]:
    import argparse

    from ptycho_dist.cli import build_parser as dist_parser
    from ptycho_torch.cli import build_parser as torch_parser

    out: set[str] = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            out.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(torch_parser() if program == "ptycho-torch" else dist_parser())
    return out


def test_every_flag_and_config_key_a_doc_names_exists():
    """Flags written after `ptycho-torch` / `ptycho-dist` on a line of a doc exist in that program's
    parser (`--section.field` overrides name a real field); every `section.field` a doc names exists."""
    import dataclasses
    import re

    from ptycho_torch.config import SECTIONS

    keys = {f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    flags = {p: _flags(p) for p in ("ptycho-torch", "ptycho-dist")}
    wrong = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            for program in flags:
                for tail in line.split(program + " ")[1:]:
                    tail = tail.split("|")[0].split("`")[0]
                    for flag in re.findall(r"(?<![\w-])--[a-z][\w.-]*", tail):
                        flag = flag.rstrip(".")
                        known = flag in flags[program] or flag[2:] in keys or flag == "--section.field"
                        if not known:
                            wrong.append(f"{doc.name}:{n}: {program} has no flag {flag}")
            for key in re.findall(r"(?<![\w./~-])(?:data|model|training|inference|execution)\.[a-z_]+\b(?![.(])", line):
                if key not in keys and not key.endswith("_") and key.split(".")[1] not in ("pt", "py"):
                    wrong.append(f"{doc.name}:{n}: no config field {key}")
    assert not wrong, "\n".join(wrong)


def test_generated_section_descriptions_are_whole_sentences():
    """Each section's description is its docstring's whole first paragraph, not a cut-off first line."""
    lines = generated_reference().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("### `") and not lines[i + 2].startswith("|"):
            assert lines[i + 2].endswith("."), lines[i + 2]


def test_architecture_page_names_every_module():
    """docs/architecture.md's module tables name every module of both packages (paths relative to the
    package: `data/contract.py`; a row may name several modules)."""
    import re

    root = PAGE.parents[1]
    text = (PAGE.parent / "architecture.md").read_text()
    missing = []
    for package in ("ptycho_torch", "ptycho_dist"):
        section = text.split(f"### {package}", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
        named = set(re.findall(r"`([\w/]+\.py)`", section))
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root / package).as_posix()
            if path.name != "__init__.py" and relative not in named:
                missing.append(f"{package}/{relative}")
    assert not missing, "docs/architecture.md does not list: " + ", ".join(missing)
