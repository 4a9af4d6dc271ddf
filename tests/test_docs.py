"""Every reference to the design notes in the code names a section that docs/design.md has."""

import re

from conftest import REPO


def test_design_references_resolve():
  text = (REPO / "docs" / "design.md").read_text()
  sections = set(re.findall(r"^## (\d+)\. ", text, flags=re.M))
  assert {"3", "4", "5", "6", "7"} <= sections
  refs = {}
  for path in sorted((REPO / "moe_asr").rglob("*.py")):
    source = path.read_text()
    assert "DESIGN §" not in source, path
    for number in re.findall(r"docs/design\.md §(\d+)", source):
      refs.setdefault(number, []).append(path.relative_to(REPO).as_posix())
  assert refs, "the code names no section"
  missing = {n: files for n, files in refs.items() if n not in sections}
  assert not missing, missing
