"""The op table (`edbc/spec/ops.py`) and what is written about it."""

import re

from edbc.settings import REPO_ROOT
from edbc.spec.ops import OPS


def readme_op_names() -> set[str]:
    """The op names of the README's list (`Primitive ops: ...` in The spec format)."""
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index("Primitive ops:")
    paragraph = text[start:text.index("\n\n", start)]
    listed = paragraph[:paragraph.index("; the operands of")]
    return set(re.findall(r"`([a-z_]+)", listed))


def test_the_readme_lists_exactly_the_ops_of_the_table():
    names = readme_op_names()
    assert names == set(OPS), (f"missing from the README: {sorted(set(OPS) - names)}; "
                               f"not ops: {sorted(names - set(OPS))}")
