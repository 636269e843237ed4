"""docs/configuration.md cannot drift from the config dataclasses."""

from pathlib import Path

from ptycho_torch.config.reference import BEGIN, END, generated_reference

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_configuration_page_matches_dataclasses():
    text = PAGE.read_text()
    generated = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert generated == generated_reference().strip(), (
        "docs/configuration.md is stale: run python -m ptycho_torch.config.reference --write docs/configuration.md")


DOCS = [*sorted((PAGE.parent).glob("*.md")), PAGE.parents[1] / "README.md", PAGE.parents[1] / "cluster" / "README.md"]


def _flags(program: str) -> set[str]:
    import argparse

    from ptycho_dist.cli import build_parser as dist_parser
    from ptycho_torch.cli.main import build_parser as torch_parser

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
    from ptycho_torch.config.renamed import RENAMED_FIELDS

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
            renames = "->" in line or "old" in line  # a documented rename may name the old field
            for key in re.findall(rf"(?<![\w./~-])(?:{'|'.join(SECTIONS)}|execution)\.[a-z_]+\b(?![.(])", line):
                if renames and key in RENAMED_FIELDS:
                    continue
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
    """docs/architecture.md's map names every sub-package and top-level module of both packages
    (`data/`, `api.py`), in at most about 15 rows; each sub-package's __init__.py names each of its
    modules and sub-packages (the tree explains itself)."""
    import ast
    import re

    root = PAGE.parents[1]
    text = (PAGE.parent / "architecture.md").read_text()
    missing, rows = [], 0
    for package in ("ptycho_torch", "ptycho_dist"):
        section = text.split(f"### {package}", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
        rows += sum(1 for line in section.splitlines() if line.startswith("| `"))
        named = set(re.findall(r"`([\w/]+(?:\.py|/))`", section))
        for path in sorted((root / package).iterdir()):
            if path.name.startswith(("_", ".")) or not (path.suffix == ".py" or (path / "__init__.py").is_file()):
                continue
            entry = path.name if path.suffix == ".py" else path.name + "/"
            if entry not in named:
                missing.append(f"{package}/{entry} (docs/architecture.md)")
        for init in sorted((root / package).rglob("*/__init__.py")):
            doc = ast.get_docstring(ast.parse(init.read_text())) or ""
            for child in sorted(init.parent.iterdir()):
                if child.name.startswith(("_", ".")):
                    continue
                if child.suffix == ".py" and child.name not in doc or \
                        (child / "__init__.py").is_file() and child.name + "/" not in doc:
                    missing.append(f"{child.relative_to(root)} ({init.relative_to(root)}'s docstring)")
    assert not missing, "not named: " + ", ".join(missing)
    assert rows <= 16, f"docs/architecture.md's map has {rows} rows; keep it a map (the __init__ docstrings list modules)"
