"""`stirgate` command line: run, check-config, and the STIR/SHAKEN tools when present."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy.config import Config, ConfigError, load_config

__all__ = ["main"]


def _load(path: str) -> Config | None:
    """The config, with its keys, trust anchors and lists loaded once to prove they are usable."""
    from proxy.authentication import Authenticator
    from proxy.stir.errors import SigningError, StirError

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"stirgate: {exc}", file=sys.stderr)
        return None
    try:
        auth = Authenticator(config)
    except (OSError, ValueError, SigningError, StirError) as exc:
        print(f"stirgate: {path}: stir: {exc}", file=sys.stderr)
        return None
    if config.policies is not None:
        from policies.loader import load_policies

        try:
            load_policies(config.policies, trunks=[t.name for t in config.trunks],
                          tn_policy=auth.tn_policy).setup_sync()
        except ConfigError as exc:  # PolicyError is one: file, line and key of the policy file
            print(f"stirgate: {exc}", file=sys.stderr)
            return None
    return config


def _cmd_run(args: argparse.Namespace) -> int:
    from proxy.server import run

    config = _load(args.config)
    if config is None:
        return 2
    if args.pid_file:
        Path(args.pid_file).write_text(f"{os.getpid()}\n")
    try:
        return run(config, workers=args.workers)
    finally:
        if args.pid_file:
            Path(args.pid_file).unlink(missing_ok=True)


def _cmd_reload(args: argparse.Namespace) -> int:
    """Validate the files first (a bad file is reported here, not only in the server's log), then SIGHUP."""
    if args.config and _load(args.config) is None:
        return 2
    try:
        pid = int(Path(args.pid_file).read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        print(f"stirgate: reload: cannot signal the process in {args.pid_file}: {exc}", file=sys.stderr)
        return 1
    print(f"stirgate: reload requested (pid {pid}); the server logs 'reloaded' or 'reload_failed'")
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    extra = ""
    redirect = [t.name for t in config.trunks if t.mode == "redirect"]
    listeners = [f"{x.transport}:{x.host}:{x.port}" for x in config.listen if x.mode == "redirect"]
    if redirect or listeners:
        extra += f"; redirect: {', '.join(redirect + listeners)}"
    if config.sti_api.enabled:
        extra += f"; ATIS-1000082 API: {len(config.sti_api.clients)} clients on " \
                 f"{config.sti_api.listen or config.api.listen}"
    print(f"{config.path}: OK ({len(config.trunks)} trunks, {len(config.routes)} routes{extra})")
    return 0


def version_text() -> str:
    """`stirgate --version`: the installed version, where it runs from, and which hot path (compiled or not)."""
    from proxy import compiled

    return f"stirgate {compiled.installed_version()} ({compiled.ROOT / 'proxy'})\nhot path: {compiled.describe()}"


class _VersionAction(argparse.Action):
    """Like argparse's "version", but the text is worked out only when asked for (it imports the engine)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stirgate", description="STIR/SHAKEN call-authentication gateway")
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version and whether the hot path is compiled, then exit")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the B2BUA")
    run.add_argument("-c", "--config", required=True, help="YAML configuration file")
    run.add_argument("--workers", type=int, default=1, help="worker processes sharing the ports (SO_REUSEPORT)")
    run.add_argument("--pid-file", help="write the process id here (for `stirgate reload`)")
    run.set_defaults(func=_cmd_run)
    reload = sub.add_parser("reload", help="re-read the config and policy files of a running stirgate (SIGHUP)")
    reload.add_argument("--pid-file", required=True, help="the file `stirgate run --pid-file` wrote")
    reload.add_argument("-c", "--config", help="validate this config (and its policy file) before signalling")
    reload.set_defaults(func=_cmd_reload)
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("-c", "--config", required=True)
    check.set_defaults(func=_cmd_check_config)
    try:
        from proxy.stir import commands as stir_commands
    except ImportError:
        pass
    else:
        stir_commands.register(sub)
    from proxy import traceback_cmd

    traceback_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from proxy import compiled

    compiled.check()  # never run a compiled module older than its source
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
