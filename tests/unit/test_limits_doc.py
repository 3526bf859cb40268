"""docs/limits.md shows exactly the limits in force (it is generated from cluster/limits.py)."""

from pathlib import Path

from cluster.limits import all_limits, limits_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "limits.md"
MARKER = "<!-- generated: python -m cluster.limits -->"


def test_docs_limits_is_generated_from_the_limits_module() -> None:
    text = DOC.read_text()
    assert MARKER in text
    generated = text.split(MARKER, 1)[1].strip()
    assert generated == limits_markdown().strip(), "regenerate docs/limits.md: python -m cluster.limits"


def test_every_limit_is_documented_with_its_value() -> None:
    text = DOC.read_text()
    for group, values in all_limits().items():
        assert f"## `{group}`" in text
        for name in values:
            assert f"| `{name}` |" in text
