"""docs/architecture.md's module table is the map of the package: every module and package
in edgekit/ has a row (a package's row names each of its modules), and every module a row
names exists. A module added, moved or deleted without the map fails here."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "edgekit"
NOT_MAPPED = {"__init__.py", "__main__.py"}


def _rows() -> list[tuple[list[str], str]]:
    """(names in the first column, the whole row) for each row of the module table."""
    text = (REPO / "docs" / "architecture.md").read_text()
    table = text.split("## Modules and their one job", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            rows.append((re.findall(r"`([^`]+)`", first), line))
    return rows


def test_every_module_and_package_has_a_row_and_every_row_names_what_exists():
    rows = _rows()
    named = {name.rstrip("/") for names, _ in rows for name in names}
    modules = {p.name for p in PACKAGE.glob("*.py")} - NOT_MAPPED
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} - {"samples"}
    assert not sorted(modules - named), f"modules without a row in docs/architecture.md: {sorted(modules - named)}"
    assert not sorted(packages - named), f"packages without a row in docs/architecture.md: {sorted(packages - named)}"
    missing = sorted(n for n in named if not (PACKAGE / n).exists())
    assert not missing, f"docs/architecture.md maps modules that do not exist: {missing}"


def test_each_package_row_names_its_modules_and_only_real_ones():
    for names, row in _rows():
        for package in (n.rstrip("/") for n in names if (PACKAGE / n.rstrip("/")).is_dir()):
            inside = {p.name for p in (PACKAGE / package).glob("*.py")} - NOT_MAPPED
            mentioned = set(re.findall(r"`(?:[\w/]+/)?(\w+\.py)`", row))
            unnamed = sorted(inside - mentioned)
            assert not unnamed, f"docs/architecture.md's {package}/ row does not name {unnamed}"
            for path in re.findall(r"`([\w/]+\.py)`", row):
                candidates = [PACKAGE / package / path, PACKAGE / path]
                assert any(c.is_file() for c in candidates), f"docs/architecture.md's {package}/ row names {path}, which does not exist"
