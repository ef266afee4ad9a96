"""Hydra command-line apps: thin ``@hydra.main`` wrappers over the library's pure functions.

Each app module has a ``run(cfg) -> result`` function that turns config into plain typed
arguments, and a ``main`` that Hydra calls.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from surgseg.errors import ConfigError, SurgsegError
from surgseg.options import CueOptions, OutputOptions, Workers

T = TypeVar("T")


def _config_dir() -> str:
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "conf", here.parent / "conf"):  # installed wheel, source tree
        if candidate.is_dir():
            return str(candidate)
    raise RuntimeError(f"surgseg config folder not found next to {here}")


CONF_DIR = _config_dir()


def _register_option_groups() -> None:
    """The config groups whose defaults live in ``surgseg.options`` (one copy of each)."""
    store = ConfigStore.instance()
    for group, node in (("cues", CueOptions), ("outputs", OutputOptions), ("workers", Workers)):
        store.store(group=group, name="default", node=node)


_register_option_groups()


def cli_errors(prog: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn user errors into one line on stderr and exit status 2; Ctrl-C into status 130."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except SurgsegError as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
                sys.exit(2)
            except OmegaConfBaseException as exc:
                print(f"{prog}: config error: {str(exc).splitlines()[0]}", file=sys.stderr)
                sys.exit(2)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                sys.exit(130)

        return wrapper

    return decorate


def dataclass_from(cls: type[T], cfg: DictConfig, where: str) -> T:
    """Build the dataclass ``cls`` from ``cfg``; unknown keys are a config error."""
    values = OmegaConf.to_container(cfg, resolve=True)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {unknown}; known: {sorted(known)}")
    return cls(**values)
