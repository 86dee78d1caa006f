"""The `kaggle` executable: where it is, whose credentials it would use, and its failures explained.

Why the executable and not the Python package: `import kaggle` authenticates on import (and exits
with a help text when there are no credentials), while a subprocess can be replaced by a fake
`kaggle` on PATH in tests, which then records exactly what was asked. Credentials are checked
*before* the CLI runs, and a refusal because the competition's rules were not accepted is
recognised and explained with the rules' URL.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from common.core.errors import ConfigError

RULES_URL = "https://www.kaggle.com/c/{slug}/rules"
TOKEN_URL = "https://www.kaggle.com/settings/api"

# What `kernel` copies into the weights dataset for a competition that does not list its own
# (`WEIGHT_FILES` in its module): what `predict` reads from a finished run.

# How a refusal because the rules were not accepted reads in the CLI's output (1.x and 2.x wordings).
_RULES_REFUSAL = re.compile(r"403\s*(-|Client Error)|Forbidden|must accept|accept (its|this competition's) rules",
                            re.IGNORECASE)
# Failures the CLI reports with exit status 0 ("Dataset creation error: ...", "Kernel push error: ...").
_REPORTED_ERROR = re.compile(r"(creation|push|update) error:", re.IGNORECASE)
_NOT_FOUND = re.compile(r"404|not found|does not exist", re.IGNORECASE)


class KaggleError(ConfigError):
    """The kaggle CLI is missing, has no credentials, or refused a request (printed as one line by the CLI)."""


# --- the kaggle executable and its credentials ----------------------------------------------


def kaggle_command() -> list[str]:
    """How to run the kaggle CLI: `kaggle` on PATH, the one beside this Python, else `python -m kaggle`."""
    found = shutil.which("kaggle")
    if found:
        return [found]
    beside = Path(sys.executable).with_name("kaggle")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    if importlib.util.find_spec("kaggle") is not None:  # finds the package without importing it
        return [sys.executable, "-m", "kaggle"]
    raise KaggleError("the kaggle command-line tool is not installed (pip install kaggle)")


def kaggle_config_dir(env=os.environ) -> Path:
    """Where the CLI looks for kaggle.json: $KAGGLE_CONFIG_DIR, else ~/.kaggle, else $XDG_CONFIG_HOME/kaggle."""
    if env.get("KAGGLE_CONFIG_DIR"):
        return Path(env["KAGGLE_CONFIG_DIR"]).expanduser()
    legacy = Path("~/.kaggle").expanduser()
    if legacy.exists():
        return legacy
    return Path(env.get("XDG_CONFIG_HOME") or Path("~/.config").expanduser()) / "kaggle"


def credential_source(env=os.environ) -> str | None:
    """The first place the kaggle CLI (2.x) would take credentials from, or None when there are none.

    A kaggle.json that exists but is not JSON with `username` and `key` is an error naming the file.
    """
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    config = kaggle_config_dir(env) / "kaggle.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise KaggleError(f"{config}: not a readable JSON file ({exc}); download a new token from {TOKEN_URL}")
        if not isinstance(data, dict) or not data.get("username") or not data.get("key"):
            raise KaggleError(f"{config}: needs \"username\" and \"key\" (download a new token from {TOKEN_URL})")
        return str(config)
    home = Path("~/.kaggle").expanduser()
    for name in ("access_token", "access_token.txt", "credentials.json"):  # API token file, `kaggle auth login`
        if (home / name).is_file():
            return str(home / name)
    return None


def require_credentials(env=os.environ) -> str:
    source = credential_source(env)
    if source is None:
        config = Path(env["KAGGLE_CONFIG_DIR"] if env.get("KAGGLE_CONFIG_DIR") else "~/.kaggle") / "kaggle.json"
        raise KaggleError(
            f"no Kaggle credentials: create an API token at {TOKEN_URL} and save it as {config} (chmod 600), "
            "or set KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN (KAGGLE_CONFIG_DIR moves kaggle.json)")
    return source


def explain_failure(output: str, slug: str | None, what: str) -> str:
    """One message for a failed CLI call: the rules' URL when Kaggle refused access, else the output's tail."""
    if slug and _RULES_REFUSAL.search(output):
        return (f"Kaggle refused {what} (403): accept the competition's rules first at "
                f"{RULES_URL.format(slug=slug)} (signed in as the account of your API token), then run it again")
    tail = " | ".join(line.strip() for line in output.strip().splitlines()[-5:] if line.strip())
    return f"{what} failed: {tail or 'no output'}"


def run_kaggle(args: Sequence[str], *, slug: str | None = None, check: bool = True,
               echo: bool = True) -> subprocess.CompletedProcess:
    """Run `kaggle ARGS`, streaming its output; a failure raises KaggleError with `explain_failure`'s message."""
    args = [str(a) for a in args]
    if echo:
        print("$ kaggle " + " ".join(shlex.quote(a) for a in args), flush=True)
    process = subprocess.Popen([*kaggle_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    chunks = []
    while True:
        chunk = process.stdout.read1(65536)  # progress bars redraw with \r: pass bytes on as they come
        if not chunk:
            break
        chunks.append(chunk)
        if echo:
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
    code = process.wait()
    output = b"".join(chunks).decode(errors="replace")
    if check and (code != 0 or _REPORTED_ERROR.search(output)):
        raise KaggleError(explain_failure(output, slug, "kaggle " + " ".join(args[:2])))
    return subprocess.CompletedProcess(process.args, code, output, "")
