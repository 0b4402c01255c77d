"""No function in src/ is longer than about 80 lines without a reason written next to it.

A longer function carries a comment ``# long: <why>`` on its ``def`` line or the line above it. Run as a
script to list every function with its length, longest first:

    python tests/unit/test_function_length.py [--over 60]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
LIMIT = 80


def function_lengths(root: Path = SRC) -> list[tuple[int, str, bool]]:
    """(lines from first decorator to last line, 'path:line name', has a '# long:' reason) for every function."""
    found = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([d.lineno for d in node.decorator_list] + [node.lineno])
                near = lines[max(start - 2, 0):node.lineno]
                reason = any("# long:" in line for line in near)
                found.append((node.end_lineno - start + 1, f"{path.relative_to(root.parent)}:{node.lineno} {node.name}",
                              reason))
    return sorted(found, reverse=True)


def test_no_function_over_the_limit_without_a_reason():
    unexplained = [f"{where} ({n} lines)" for n, where, reason in function_lengths() if n > LIMIT and not reason]
    assert not unexplained, f"split these or write '# long: <why>' above them: {unexplained}"


def test_the_scan_sees_a_long_function(tmp_path):
    """The check itself works: a 90-line function is found, and its reason is read."""
    body = "\n".join(f"    x{i} = {i}" for i in range(88))
    (tmp_path / "m.py").write_text(f"def long_one():\n{body}\n    return 0\n\n\n# long: a table of cases\n"
                                   f"def explained():\n{body}\n    return 0\n")
    found = {where.split()[-1]: (n, reason) for n, where, reason in function_lengths(tmp_path)}
    assert found == {"long_one": (90, False), "explained": (90, True)}


if __name__ == "__main__":
    over = int(sys.argv[sys.argv.index("--over") + 1]) if "--over" in sys.argv else LIMIT
    for n, where, reason in function_lengths():
        if n > over:
            print(f"{n:4d}  {where}{'  (reason given)' if reason else ''}")
