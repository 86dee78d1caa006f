"""`python -m competitions.<name> <command> [key=value ...]`: the one entry point behind run.sh.

Commands are looked up in the competition module's COMMANDS registry (name -> function(comp, cfg,
positional_args)); bad input and bad configuration end with a one-line error, not a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path

from common.engine import distributed
from common.core.config import load_config
from common.core.errors import ConfigError, DataError

USAGE = """usage: ./run.sh <competition> <command> [key=value ...]
       ./run.sh test [pytest args]
       ./run.sh bench <name>
competition {name}: commands {commands}"""


def demo_data(comp, cfg, args) -> None:
    """`demo-data [DIR]`: write the competition's synthetic dataset (default inputs/demo/<name>)."""
    from common.core.paths import REPO_ROOT

    target = Path(args[0]) if args else REPO_ROOT / "inputs" / "demo" / comp.name
    comp.write_demo(target)
    (target / ".complete").write_text("ok\n")
    print(f"demo data for {comp.name} written to {target}")


# Commands every competition has, imported only when used ("module:function"); a competition's
# own COMMANDS entry of the same name wins (e.g. deepfake's kernel).
GENERIC_COMMANDS = {
    "download": "common.kaggle.commands:download_command",
    "submit": "common.kaggle.commands:submit_command",
    "kernel": "common.kaggle.commands:kernel_command",
    "runs": "common.core.runs:runs_command",
}


def lazy_command(spec: str, takes_args: bool = True):
    """A command given as "module:function", imported when it runs (keeps `--help` and tests light).

    The function is called as fn(comp, cfg, positional_args), or fn(comp, cfg) when takes_args=False.
    """
    def command(comp, cfg, args):
        import importlib

        module_name, function = spec.split(":")
        fn = getattr(importlib.import_module(module_name), function)
        return fn(comp, cfg, args) if takes_args else fn(comp, cfg)

    return command


def main(module, argv: list[str]) -> int:
    comp = module.COMPETITION
    commands = {**{name: lazy_command(spec) for name, spec in GENERIC_COMMANDS.items()}, **module.COMMANDS}
    usage = USAGE.format(name=comp.name, commands=", ".join(commands))
    if not argv or argv[0] not in commands:
        print((f"unknown command '{argv[0]}'\n" if argv else "") + usage, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    positional = [a for a in rest if "=" not in a]
    overrides = [a for a in rest if "=" in a]
    try:
        cfg = load_config(comp.config_path, overrides)
        if cfg.get("threads"):
            import torch

            torch.set_num_threads(int(cfg.threads))
        if command in getattr(module, "DISTRIBUTED_COMMANDS", ()) and distributed.wants_launch(cfg):
            return distributed.launch(module.__name__, argv, cfg)
        commands[command](comp, cfg, positional)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
