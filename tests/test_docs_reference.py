"""docs/configuration.md cannot drift from the config dataclasses."""

from pathlib import Path

from ptycho_torch.reference import BEGIN, END, generated_reference

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_configuration_page_matches_dataclasses():
    text = PAGE.read_text()
    generated = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert generated == generated_reference().strip(), (
        "docs/configuration.md is stale: run python -m ptycho_torch.reference --write docs/configuration.md")
