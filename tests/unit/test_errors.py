"""The CLI prints the project's own errors (``safeclip.errors.UserError``) as one line with exit 2, and lets
every other exception (a bug) through with its traceback."""

import subprocess
import sys

import pytest

from safeclip import errors
from safeclip.cli import main
from safeclip.config import ConfigError
from safeclip.data.errors import DataError
from safeclip.models.clip import ClipLoadError


def test_user_facing_errors_are_user_errors_and_keep_their_builtin_base():
    for cls, base in [(ConfigError, ValueError), (DataError, ValueError), (ClipLoadError, ValueError),
                      (errors.MissingFileError, FileNotFoundError), (errors.OutputExistsError, FileExistsError)]:
        assert issubclass(cls, errors.UserError) and issubclass(cls, base)


def test_a_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["world", "pretrain", "--world", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "safeclip world: error:" in err and "not a built world" in err and "Traceback" not in err


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    import safeclip.commands.world as world

    def broken(args):
        raise ValueError("an internal invariant failed")

    monkeypatch.setattr(world, "run_build", broken)
    with pytest.raises(ValueError, match="an internal invariant failed"):
        main(["world", "build", "--out", str(tmp_path / "w")])


def test_a_bug_in_a_subprocess_prints_a_traceback_not_a_user_error(tmp_path):
    code = ("import sys, safeclip.commands.world as w\n"
            "def broken(args): raise KeyError('bug')\n"
            "w.run_build = broken\n"
            "from safeclip.cli import main\n"
            f"sys.exit(main(['world', 'build', '--out', {str(tmp_path / 'w')!r}]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "KeyError: 'bug'" in result.stderr and "error:" not in result.stderr


def test_bad_seed_lists_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--out", str(tmp_path), "--seeds", "0,x"])
    assert exit_info.value.code == 2 and "--seeds" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["hysac", "export", "--model", "{tmp}/nope", "--out", "{tmp}/x"], "is not a HySAC model"),
    (["hysac", "import", "--checkpoint", "{tmp}/nope.pth", "--out", "{tmp}/x"], "download hysac_model.pth"),
    (["datagen", "generate", "--model", "m", "--out", "{tmp}/x"], "give the caption file (--captions)"),
], ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else "")
def test_newer_commands_report_bad_input_as_user_errors(argv, message, tmp_path, capsys):
    """HySAC, datagen generate and the other commands that came later raise the same UserError kinds."""
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
