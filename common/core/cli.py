"""`python -m competitions.<name> <command> [key=value ...]`: the one entry point behind run.sh.

Every competition has the same commands (COMMANDS, "module:function", imported when used, so
`--help` and tests stay light), plus any its object declares in `commands`. A command function is
called as fn(comp, cfg) or fn(comp, cfg, positional_args); `train`, `pretrain` and `predict` validate
the whole config before they write anything. Bad input and bad configuration end with a one-line
error, not a traceback.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

from common.core.config import load_config
from common.core.errors import ConfigError, DataError
from common.engine import distributed
from common.models.input_config import resolve_input_config

USAGE = """usage: ./run.sh <competition> <command> [key=value ...]
       ./run.sh test [pytest args]
       ./run.sh bench <name>
competition {name}: commands {commands}"""

COMMANDS = {
    "demo-data": "common.core.cli:demo_data",
    "train": "common.tasks.engine:train",
    "predict": "common.tasks.engine:predict",
    "embed": "common.tasks.engine:embed",
    "export": "common.tasks.export:export_command",
    "report": "common.report.build:report_command",
    "pretrain": "common.ssl.pretrain:pretrain_command",
    "download": "common.kaggle.commands:download_command",
    "submit": "common.kaggle.commands:submit_command",
    "kernel": "common.kaggle.commands:kernel_command",
    "runs": "common.core.runs:runs_command",
}
DISTRIBUTED_COMMANDS = ("train", "pretrain")  # relaunched under torchrun for gpus=N / nproc=N


def demo_data(comp, cfg, args) -> None:
    """`demo-data [DIR]`: write the competition's synthetic dataset (default inputs/demo/<name>)."""
    from common.core.paths import REPO_ROOT

    target = Path(args[0]) if args else REPO_ROOT / "inputs" / "demo" / comp.name
    comp.write_demo(target)
    (target / ".complete").write_text("ok\n")
    print(f"demo data for {comp.name} written to {target}")


def resolve_command(spec: str):
    module_name, function = spec.split(":")
    return getattr(importlib.import_module(module_name), function)


def run_command(spec: str, comp, cfg, args=()):
    fn = resolve_command(spec)
    return fn(comp, cfg, list(args)) if len(inspect.signature(fn).parameters) >= 3 else fn(comp, cfg)


def main(comp, argv: list[str]) -> int:
    commands = {**COMMANDS, **comp.commands}
    usage = USAGE.format(name=comp.name, commands=", ".join(commands))
    if not argv or argv[0] not in commands:
        print((f"unknown command '{argv[0]}'\n" if argv else "") + usage, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    positional = [a for a in rest if "=" not in a]
    overrides = [a for a in rest if "=" in a]
    try:
        cfg = load_config(comp.config_path, overrides)
        resolve_input_config(cfg, command)  # data.image_size=auto -> [h, w], once, before validation and torchrun
        if cfg.threads:
            import torch

            torch.set_num_threads(int(cfg.threads))
        if command in DISTRIBUTED_COMMANDS and distributed.wants_launch(cfg):
            from common.core.validate import validate_config
            from common.tasks import TASKS

            validate_config(cfg, TASKS.get(comp.task))  # one clear error here, not one per process
            return distributed.launch(type(comp).__module__, argv, cfg)
        run_command(commands[command], comp, cfg, positional)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
