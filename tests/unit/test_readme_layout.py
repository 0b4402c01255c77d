"""The README's layout section names every module and folder of the package and of the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def layout_names() -> tuple[set[str], set[str]]:
    """Names in the README's layout block: (entries under src/safeclip/, top-level entries)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Layout\n\n```\n(.*?)```", text, re.S)
    assert block, "README.md has no '## Layout' section with a code block"
    package, top = set(), set()
    for line in block.group(1).splitlines():
        name = line.split()[0] if line.strip() else ""
        if line.startswith("  ") and name and not line.startswith("   "):
            package.add(name.rstrip("/").removesuffix(".py"))
        elif name and not line.startswith(" "):
            top.add(name.rstrip("/"))
    return package, top


def test_layout_names_every_package_module_and_folder():
    package, _ = layout_names()
    src = ROOT / "src" / "safeclip"
    present = {p.stem if p.is_file() else p.name for p in src.iterdir()
               if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and not p.name.startswith("__"))}
    assert present - package == set(), "add these to README.md's Layout section"
    assert package - present == set(), "README.md's Layout section names what no longer exists"


def test_layout_names_every_top_level_folder():
    _, top = layout_names()
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "src"
               and not p.name.endswith(".egg-info")}
    assert folders - top == set(), "add these to README.md's Layout section"
    assert top - {"src/safeclip"} - folders == set(), "README.md's Layout section names what no longer exists"
