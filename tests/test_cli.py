from conftest import run_cli


def test_usage_errors_exit_2_with_a_hint_not_a_traceback(monkeypatch, capsys):
    code, _, err = run_cli(["ensemble"], monkeypatch, capsys)
    assert code == 2 and "Missing argument" in err and "Traceback" not in err


def test_help_lists_every_command(monkeypatch, capsys):
    code, out, _ = run_cli(["--help"], monkeypatch, capsys)
    assert code == 0
    for command in ("train-member", "ensemble", "report", "study"):
        assert command in out
