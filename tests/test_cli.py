import pytest
from conftest import run_cli

from ferens.errors import FerensError


def test_usage_errors_exit_2_with_a_hint_not_a_traceback(monkeypatch, capsys):
    code, _, err = run_cli(["ensemble"], monkeypatch, capsys)
    assert code == 2 and "Missing argument" in err and "Traceback" not in err


def test_help_lists_every_command(monkeypatch, capsys):
    code, out, _ = run_cli(["--help"], monkeypatch, capsys)
    assert code == 0
    for command in ("train-member", "ensemble", "report", "study"):
        assert command in out


def test_every_train_member_flag_sets_the_config_field_of_its_name():
    """train-member passes its flags to TrainConfig by name: a flag whose parameter is not a
    field's name would be dropped without a word."""
    import inspect

    from ferens.cli import train_member_cmd
    from ferens.config import TrainConfig

    own = {"config", "set_", "resume", "quiet"}  # the command's own options, not config fields
    flags = set(inspect.signature(train_member_cmd).parameters) - own
    unknown = flags - set(TrainConfig.__dataclass_fields__)
    assert flags and not unknown, f"flags that set no config field: {sorted(unknown)}"


def test_set_values_are_json_when_they_parse_else_text():
    from ferens.config import parse_overrides

    assert parse_overrides(["focal-gamma=1.5", "compile=true", "augment=strong", "x=a=b"]) == {
        "focal_gamma": 1.5, "compile": True, "augment": "strong", "x": "a=b"}
    with pytest.raises(FerensError, match="expected key=value"):
        parse_overrides(["epochs"])
