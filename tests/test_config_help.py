"""Config fields carry their help beside their default; --help and docs/config.md show it, generated."""
import dataclasses

import pytest

from weightsep import cli, config_docs
from weightsep.config_help import help_text, opt
from weightsep.pipeline import RunConfig
from weightsep.train import TrainConfig

PARSER = cli.parser()
COMMANDS = config_docs.commands(PARSER)
FLAGGED = list(dict.fromkeys(cls for sub in COMMANDS.values() for cls in sub.get_default("configs") or ()))


def test_the_cli_configs_are_found():
    assert {cls.__name__ for cls in FLAGGED} == {"PackConfig", "FisherConfig", "OptimizeConfig", "PrecisionConfig"}


@pytest.mark.parametrize("cls", [*FLAGGED, RunConfig, TrainConfig], ids=lambda cls: cls.__name__)
def test_every_config_field_has_help(cls):
    assert [f.name for f in dataclasses.fields(cls) if not help_text(f).strip()] == []


@pytest.mark.parametrize("command", [name for name, sub in COMMANDS.items() if sub.get_default("configs")])
def test_help_shows_each_config_flags_help_and_default(command):
    sub = COMMANDS[command]
    shown = {a.dest: (a.help or "").replace("%%", "%") for a in sub._actions if a.option_strings}
    for cls in sub.get_default("configs"):
        for f in dataclasses.fields(cls):
            if f.name in cli.SKIP:
                continue
            assert shown[f.name].startswith(help_text(f)), (cls.__name__, f.name)
            assert shown[f.name].endswith(")") and "(default " in shown[f.name]
    text = sub.format_help()  # argparse formats every help string (a bare % would raise here)
    assert "(default " in text


def test_docs_table_is_the_generated_one():
    """After changing a config field: `python -m weightsep.config_docs` rewrites docs/config.md."""
    assert config_docs.DOC.read_text() == config_docs.markdown(PARSER)


def test_opt_keeps_the_default_and_refuses_a_field_without_help():
    @dataclasses.dataclass(frozen=True)
    class C:
        a: int = opt(3, "three")
        b: list = opt(help="a list", factory=list)

    assert C() == C(3, []) and C.a == 3
    with pytest.raises(ValueError, match="help"):
        opt(1)
