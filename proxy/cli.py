"""`python -m proxy …`: argument parsing only; each command loads the config and calls one module."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path

from proxy import __version__
from proxy.admin import billing_cli, store_copy
from proxy.admin import cli as admin_cli
from proxy.admin.cli import Command
from proxy.config import load_config, parse_workers
from proxy.console import cli as console_cli
from proxy.errors import ConfigError
from proxy.host_limits import host_total

DEFAULT_CONFIG = "config/gateway.yaml"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=f"config file (default {DEFAULT_CONFIG})")
    parser = argparse.ArgumentParser(prog="python -m proxy", description="OneKeyModels gateway", parents=[common])
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument("--workers", help="worker processes on the listen port: N or auto (overrides the config)")
    sub.add_parser("check-config", parents=[common], help="validate a config file and exit")
    admin_cli.register(sub, [common])
    billing_cli.register(sub, [common])
    console_cli.register(sub, [common])
    store_copy.register(sub, [common])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(billing_cli.rewrite_argv(sys.argv[1:] if argv is None else argv))
    path = Path(getattr(args, "config", DEFAULT_CONFIG))
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.command == "serve":
        from proxy.server import serve  # keeps CLI commands from importing the whole server

        if args.workers is not None:
            try:
                config = dataclasses.replace(config, workers=parse_workers(args.workers, "--workers"))
            except ConfigError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        return serve(config)
    if args.command == "check-config":
        pool = len(config.cheap_pool)
        print(
            f"{config.source}: ok ({pool} pool accounts, {len(config.resale_models)} Business models, "
            f"{len(config.byok_providers)} BYOK providers"
            + (f"; billing on, {len(config.billing.entries())} prices in {config.billing.currency})"
               if config.billing.enabled else "; billing off)")
        )
        if (total := host_total(config)) is not None:
            print(total)
        return 0
    command: Command = args.func
    return asyncio.run(command(args, config))
