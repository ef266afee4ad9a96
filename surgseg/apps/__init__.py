"""Hydra command-line apps: thin ``@hydra.main`` wrappers over the library's pure functions.

Each app module has a ``run(cfg) -> result`` function that turns config into plain typed
arguments, and a ``main`` made by ``entry``. Before Hydra runs, ``entry`` answers ``--help``
with the app's own settings and checks the command line (unknown keys, every missing
required setting at once), so that a user's mistake is one line, never a traceback. Heavy
modules (torch, PyAV) are imported inside ``run``, so ``--help`` and mistakes answer at once.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import fcntl
import functools
import importlib
import io
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from surgseg.errors import ConfigError, SurgsegError
from surgseg.options import CueOptions, OutputOptions, RayOptions, Workers
from surgseg.tuning import tune_process

T = TypeVar("T")

OPTION_GROUPS: dict[str, type] = {"cues": CueOptions, "outputs": OutputOptions, "workers": Workers,
                                  "ray": RayOptions}  # fmt: skip
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM,
                 errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT)  # fmt: skip
_INTERRUPTED = threading.Event()  # set by Ctrl-C: whatever is raised after it, the user stopped
_LOCKS: dict[Path, int] = {}  # output folders this process holds locked, and their fds


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
    for group, node in OPTION_GROUPS.items():
        store.store(group=group, name="default", node=node)


_register_option_groups()


def _on_ctrl_c(signum: int, frame: object) -> None:
    _INTERRUPTED.set()
    raise KeyboardInterrupt


def _interrupted(prog: str) -> NoReturn:
    print(f"{prog}: interrupted", file=sys.stderr)
    sys.exit(130)


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def cli_errors(prog: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn user errors into one line on stderr and exit status 2 (a file that cannot be
    written: 1); Ctrl-C into status 130."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except SurgsegError as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
                sys.exit(2)
            except OmegaConfBaseException as exc:
                print(f"{prog}: config error: {_one_line(exc)}", file=sys.stderr)
                sys.exit(2)
            except OSError as exc:
                if exc.errno not in _WRITE_ERRNOS:
                    raise
                where = f"{exc.filename}: " if exc.filename else ""
                print(f"{prog}: error: {where}{exc.strerror}", file=sys.stderr)
                sys.exit(1)
            except KeyboardInterrupt:
                _interrupted(prog)
            except Exception:
                # Ctrl-C inside a native import or call can surface as another exception
                if _INTERRUPTED.is_set():
                    _interrupted(prog)
                raise

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


# --- checks at the edge -------------------------------------------------------------------------


def check_int(cfg: DictConfig, key: str, *, minimum: int) -> int:
    """``cfg[key]`` as an integer ≥ ``minimum``, or a ConfigError naming the key."""
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer ≥ {minimum}, got {value!r}")
    return value


def check_bool(cfg: DictConfig, key: str) -> bool:
    """``cfg[key]`` as a boolean (true/false), or a ConfigError naming the key."""
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def check_input_size(cfg: DictConfig, key: str = "input_size") -> tuple[int, int] | None:
    """``cfg[key]`` as (height, width), or None when unset; a ConfigError names the key."""
    from surgseg.preprocess import check_input_size as check

    value = OmegaConf.select(cfg, key)
    if value is None:
        return None
    if not isinstance(value, ListConfig):
        raise ConfigError(f"{key} must be [height, width] in pixels, got {value!r}")
    return check(list(value), key=key)


def check_device(cfg: DictConfig) -> str:
    """``cfg.device`` ("cpu", "cuda" or "cuda:N"), checked against this machine."""
    device = str(cfg.device)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ConfigError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"device={device}: no CUDA GPU is available on this machine "
                              "(torch.cuda.is_available() is False); use device=cpu")  # fmt: skip
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={device}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")  # fmt: skip
    return device


def claim_output_dir(path: str | Path, *, key: str = "output_dir") -> Path:
    """Create the output folder ``path`` if needed, check that it can be written, and lock it
    for this process (an ``flock`` on the folder itself, released when the process ends): a
    second process writing there is refused with one line."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key} is a file, not a folder", path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{key} cannot be written: {exc.strerror}", path) from None
    folder = path.resolve()
    if folder in _LOCKS:
        return path
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError("another surgseg process is writing into this folder", path) from None
    _LOCKS[folder] = fd  # held until the process ends
    return path


# --- the command line, before Hydra -------------------------------------------------------------


def _groups() -> set[str]:
    return {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()} | set(OPTION_GROUPS)


def _keys(cfg: DictConfig, prefix: str = "", *, missing: bool = False) -> list[str]:
    """Every key of ``cfg``, dotted (with ``missing``: those set to ``???``), resolving no
    interpolation."""
    out = []
    for key in cfg:
        dotted = f"{prefix}{key}"
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            out += [dotted] * (not missing) + _keys(node, dotted + ".", missing=missing)
        elif not missing or node._is_missing():
            out.append(dotted)
    return out


def _unknown_key(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError(f"unknown setting {key!r}{hint} (`--help` lists the settings)")


MayMiss = Callable[[DictConfig], bool]  # True: the app fills in the missing settings itself


def check_command_line(config_name: str, argv: list[str], *,
                       may_miss: MayMiss | None = None) -> DictConfig:  # fmt: skip
    """Compose ``config_name`` with the overrides in ``argv`` (the first value of each sweep)
    and return it; ConfigError for an override that cannot apply, a key added with ``+`` that
    the app does not know, or required settings left unset (all of them, in one line)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides([a for a in argv
                                                           if not a.startswith("-")])
    except HydraException as exc:
        raise ConfigError(f"cannot read the command line: {_one_line(exc)}") from None
    overrides = [f"{o.get_key_element()}={next(o.sweep_string_iterator())}"
                 if o.is_sweep_override() else o.input_line for o in parsed]  # fmt: skip
    groups = _groups()
    added = [o.key_or_group for o in parsed if o.is_add() and o.key_or_group not in groups]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            base = compose(config_name)
            known = [k for k in _keys(base) if not k.startswith("hydra")]
            for key in added:
                if OmegaConf.select(base, key, default=MISSING) is MISSING:
                    raise _unknown_key(key, known)
            try:
                cfg = compose(config_name, overrides=overrides)
            except HydraException as exc:
                key = re.search(r"Could not override '([^']+)'", str(exc))
                if key and OmegaConf.select(base, key[1], default=MISSING) is MISSING:
                    raise _unknown_key(key[1], known) from None
                option = re.search(r"Could not find '([^'/]+)/([^']+)'", str(exc))
                if option:
                    group, name = option[1], option[2]
                    names = sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
                    raise ConfigError(f"{group}={name}: no such option; one of: "
                                      f"{', '.join(names)}") from None  # fmt: skip
                merging = re.match(r"Error merging override (\S+)", str(exc))
                if merging and exc.__cause__ is not None:  # the value does not fit the key's type
                    raise ConfigError(f"{merging[1]}: {_one_line(exc.__cause__)}") from None
                raise ConfigError(_one_line(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    if not (may_miss is not None and may_miss(cfg)):
        check_missing(cfg)
    return cfg


def check_missing(cfg: DictConfig) -> None:
    """ConfigError naming, in one line and dotted, every required setting (``???``) that
    ``cfg`` leaves unset."""
    missing = sorted(k for k in _keys(cfg, missing=True) if not k.startswith("hydra"))
    if missing:
        settings = " ".join(f"{k}=..." for k in missing)
        raise ConfigError(f"missing required setting(s): {', '.join(missing)} "
                          f"(add {settings} to the command)")  # fmt: skip


def _yaml_parts(config_name: str) -> tuple[list[str], list[str], list[str]]:
    """(header comment, entries of the defaults list, setting lines) of a primary config
    file, comments kept. An entry is ``group: option``, ``group@package: option`` or the name
    of a config merged in whole (``common``, ``_self_``)."""
    text = (Path(CONF_DIR) / f"{config_name}.yaml").read_text().splitlines()
    header = []
    for line in text:
        if not line.startswith("#") or line.startswith("# @package"):
            break
        header.append(line[2:] if line.startswith("# ") else line[1:])
    groups, settings, section = [], [], ""
    for line in text[len(header):]:
        if not line.strip():
            continue
        top = line.split(":")[0]
        if not line[0].isspace() and not line.startswith("#"):
            section = top if top in ("defaults", "hydra") else "settings"
        if section == "defaults" and line.lstrip().startswith("- "):
            groups.append(line.strip()[2:])
        elif section == "settings":
            settings.append(line)
    return header, groups, settings


def _not_restated(shared: list[str], own: list[str]) -> list[str]:
    """The setting lines of ``shared`` (each key with its comment lines) less the keys that
    ``own`` sets again (an app that takes a shared key its own way says so there)."""
    keys = {line.split(":")[0] for line in own if not line[0].isspace()}
    kept, skipping = [], False
    for line in shared:
        if not line[0].isspace():
            skipping = line.split(":")[0] in keys
        if not skipping:
            kept.append(line)
    return kept


def app_help(prog: str, config_name: str) -> str:
    """``--help``: the app's own settings with their comments, its groups and their options."""
    header, groups, settings = _yaml_parts(config_name)
    lines = [*header, "", "Settings (key=value on the command line; ??? = required):"]
    lines += [f"  {line}" for line in settings]
    for entry in groups:
        name, colon, rest = entry.partition(":")
        name, default = name.split("#")[0].strip(), rest.split("#")[0].strip()
        if not colon:  # a config merged in whole
            if name != "_self_":
                lines += ["", f"Settings of every app (conf/{name}.yaml):"]
                lines += [f"  {line}" for line in _not_restated(_yaml_parts(name)[2], settings)]
            continue
        group, _, package = name.partition("@")  # augment@augment.train: conf/augment/
        key = package or group
        if group in OPTION_GROUPS:
            cls = OPTION_GROUPS[group]
            lines += ["", f"{key}.*: {cls.__doc__.split('(')[0].split('.')[0].strip()}"]
            for f in fields(cls):
                value = "null" if f.default is None else f.default
                if f.default is MISSING:
                    value = "???"
                note = f.metadata.get("help", "")
                lines.append(f"  {key}.{f.name}={value}" + (f"    # {note}" if note else ""))
        else:
            options = sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
            lines += ["", f"{name}={default} (one of: {', '.join(options)}); its settings: "
                          f"{key}.<key>=value (see conf/{group}/{default}.yaml)"]  # fmt: skip
    sweeps = "-m (sweeps: each combination into its own folder), " if config_name == "bench" else ""
    lines += ["", f"Hydra's own flags also work: {prog} --cfg job (the composed config), "
                  f"{sweeps}--hydra-help."]  # fmt: skip
    return "\n".join(lines)


def _may_miss_train(cfg: DictConfig) -> bool:
    """With a run in ``output_dir`` (its ``last.pt``), training fills in the settings from it
    (``resume=true``) or refuses a new run into that folder, whatever else is missing; with
    none there, every required setting is needed, ``resume=true`` or not."""
    return not OmegaConf.is_missing(cfg, "output_dir") and (
        Path(str(cfg.output_dir)) / "last.pt").is_file()  # fmt: skip


APPS: dict[str, MayMiss | None] = {"train": _may_miss_train, "infer": None, "demo": None,
                                   "eval": None, "export": None, "stream": None, "bench": None}
"""The apps (module ``surgseg.apps.<name>``, command ``surgseg-<name>``, config
``conf/<name>.yaml``) and which of them may start with required settings missing."""


def _check_before_hydra(app: str, argv: list[str]) -> None:
    """``check_command_line`` on the overrides of ``argv``, Hydra's flags and their values set
    aside. Flags that show the config (``--cfg``, ``--info``, ``--package``, ``--resolve``)
    still have unknown keys refused but may leave required settings out; flags that run no
    job of ours (``--hydra-help``, ``--version``, ``--shell-completion``, another config with
    ``-cn``/``-cp``/``-cd``, ``--experimental-rerun``) are left to Hydra."""
    from hydra._internal.utils import get_args_parser

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = get_args_parser().parse_args(argv)
    except SystemExit:  # --version, or a malformed flag: Hydra's own message says which
        return
    if (args.hydra_help or args.shell_completion or args.experimental_rerun
            or args.config_name or args.config_path or args.config_dir):  # fmt: skip
        return
    if args.multirun and app != "bench":
        raise ConfigError(
            f"surgseg-{app} runs one job into one output_dir: -m (sweeps) is for surgseg-bench; "
            "run the app once per setting"
        )
    shows = args.cfg or args.info or args.package or args.resolve
    cfg = check_command_line(app, args.overrides,
                             may_miss=(lambda cfg: True) if shows else APPS[app])  # fmt: skip
    check_int(cfg, "seed", minimum=0)  # conf/common.yaml: every app's


def _print_help(text: str) -> None:
    """Print ``text``; a reader that stops early (``--help | head``) is no error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit


def launch(app: str) -> None:
    """Run the command ``surgseg-<app>``: ``--help``, the command-line check, then the app's
    Hydra ``main``, imported only then."""
    prog = f"surgseg-{app}"
    argv = sys.argv[1:]
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_ctrl_c)
    try:
        if "--help" in argv or "-h" in argv:
            _print_help(app_help(prog, app))
            return
        _check_before_hydra(app, argv)
        tune_process()
        importlib.import_module(f"surgseg.apps.{app}").main()
    except SurgsegError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted(prog)
    except Exception:
        if _INTERRUPTED.is_set():
            _interrupted(prog)
        raise
