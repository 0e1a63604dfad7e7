"""The command line's overrides, composed once before Hydra runs, so that a mistyped option or config name is
one line naming the close match and exit 2 (a user error, as everywhere in covidseg), not Hydra's multi-line
error and exit 1.

Hydra composes the config inside its own error handler, which prints and exits before any covidseg code
runs; the only way to answer instead is to compose first. That costs one composition (about 0.15 s) on a
command that has overrides. Keys added with `+` compose fine whatever their name; covidseg.runs.checks
checks those against what they configure (e.g. `+trainer.max_epoch=1`).
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser  # the parser hydra.main reads sys.argv with
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import CompactHydraException, HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from covidseg.errors import UserError
from covidseg.paths import CONF_DIR

# Options that make Hydra do something else than compose this config (help, another config, a re-run):
# Hydra answers those itself.
OTHER_COMMANDS = (
    "help",
    "hydra_help",
    "cfg",
    "info",
    "shell_completion",
    "experimental_rerun",
    "config_path",
    "config_name",
    "config_dir",
)


def check_command_line(config_name: str, argv: Sequence[str] | None = None) -> None:
    """Exit 2 with one line on stderr if the overrides in `argv` (default: sys.argv) do not compose with
    conf/<config_name>.yaml; return otherwise, and Hydra takes over."""
    args = get_args_parser().parse_args(argv)
    if not args.overrides or any(getattr(args, name, None) for name in OTHER_COMMANDS):
        return
    try:
        problem = composition_problem(config_name, one_job(args.overrides))
    except UserError as err:
        problem = str(err)
    if problem:
        sys.stderr.write(f"Error in the command line: {problem}\n")
        raise SystemExit(2)


def one_job(overrides: Sequence[str]) -> list[str]:
    """The overrides of a sweep's first job: each sweep (a,b / choice(a,b) / range(...)) replaced by its
    first value. Sweeps without listable values (Optuna's interval(...)) are left out: the sweeper's."""
    jobs, parser = [], OverridesParser.create()
    for line in overrides:
        try:
            override = parser.parse_override(line)
        except HydraException as err:  # the grammar's error, without the override it is about
            raise UserError(f"{line}: Hydra cannot read this override ({_one_line(str(err))})") from None
        if not override.is_sweep_override():
            jobs.append(override.input_line)
        elif override.is_discrete_sweep():
            try:
                first = next(iter(override.sweep_string_iterator()))
            except Exception:  # e.g. glob(...), which needs Hydra's config repository to expand
                continue
            jobs.append(f"{override.get_key_element()}={first}")
    return jobs


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=overrides, return_hydra_config=True)


def composition_problem(config_name: str, overrides: list[str]) -> str | None:
    """None if `overrides` compose with the config, else what is wrong and the fix, in one line."""
    try:
        _compose(config_name, overrides)
        return None
    except MissingConfigException as err:
        if err.missing_cfg_file and err.options is not None:
            group, _, choice = err.missing_cfg_file.rpartition("/")
            return _unknown_choice(group, choice, list(err.options))
        return _one_line(str(err))
    except CompactHydraException as err:
        failed = _failed_override(str(err), overrides)
        if failed is None:
            return _one_line(str(err))
        others = [o for o in overrides if o != failed.input_line]
        try:
            explained = _unknown_key(failed, _compose(config_name, others))
        except CompactHydraException:  # another override is wrong too: Hydra's words for this one
            explained = None
        return explained or _one_line(str(err))


def _failed_override(message: str, overrides: list[str]) -> Override | None:
    """The override Hydra's message is about: it quotes its key on the first line."""
    quoted = re.search(r"'([^']+)'", message.splitlines()[0] if message else "")
    if not quoted:
        return None
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.key_or_group == quoted.group(1):
            return override
    return None


def _unknown_choice(group: str, choice: str, options: list[str]) -> str:
    close = difflib.get_close_matches(choice, options, n=1, cutoff=0.6)
    fix = f"Did you mean {group}={close[0]}?" if close else f"Use one of: {', '.join(options)}."
    return f"{group}={choice}: there is no config {choice!r} in group {group} ({', '.join(options)}). {fix}"


def _unknown_key(override: Override, cfg: DictConfig) -> str | None:
    """For an override whose key is not in `cfg` (the config without it), or that adds an existing key;
    None where neither is the problem."""
    key = override.key_or_group
    value = "" if override.value() is None and override.is_delete() else f"={override.get_value_string()}"
    given = f"{override.get_key_element()}{value}"
    if override.is_add():
        return f"{given}: {key} already exists; set it without the +, as {key}{value}."
    parts, node = key.split("."), OmegaConf.to_container(cfg, resolve=False)
    for depth, part in enumerate(parts):
        if not isinstance(node, dict):
            break
        if part in node:
            node = node[part]
            continue
        options = sorted(str(k) for k in node if not (str(k).startswith("_") and str(k).endswith("_")))
        where = ".".join(parts[:depth]) or "the config"
        close = difflib.get_close_matches(part, options, n=1, cutoff=0.6)
        if close:
            fixed = ".".join([*parts[:depth], close[0], *parts[depth + 1 :]])
            prefix = "~" if override.is_delete() else ""
            return f"{given}: {where} has no option {part!r}. Did you mean {prefix}{fixed}{value}?"
        add = "" if override.is_delete() else f", or add a new key with +{key}{value}"
        return f"{given}: {where} has no option {part!r} (it has: {', '.join(options)}). Fix the name{add}."
    return None


def _one_line(message: str) -> str:
    """Hydra's message without its config search path listing, on one line."""
    return " ".join(message.split("Config search path:")[0].split())
