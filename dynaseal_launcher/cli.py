"""The `dynaseal` command: run the local stack, the demo, a single service, or key tools."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from dynaseal.config import ConfigError, load_config
from dynaseal.runtime.locations import paths_of
from dynaseal_launcher.processes import StartupError

# `dynaseal <service>` calls the service's own main(argv): the launcher may import a service, the core never.
SERVICE_MODULES = {"authz": "authz_service", "issuer": "issuer_api", "mock-llm": "mock_llm",
                   "shipper": "log_shipper", "consumer": "callback_consumer", "admin": "admin_api",
                   "usage-recorder": "usage_recorder"}
# Tools that live with a service, run the same way: `dynaseal dlq replay …`.
TOOL_MODULES = {"dlq": "callback_consumer.dlq_replay", "status": "dynaseal_launcher.status"}
REDIS_TIMEOUT_S = 5.0


def _say(line: str) -> None:
    print(f"dynaseal: {line}", flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    """Run the whole local stack until Ctrl-C / SIGTERM."""
    from dynaseal_launcher.up import run_stack

    return run_stack(args.config, demo=False)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the stack, then the demo edge client, then stop."""
    from dynaseal_launcher.up import run_stack

    return run_stack(args.config, demo=True, keep_running=args.keep_running)


def cmd_envoy_config(args: argparse.Namespace) -> int:
    """Render (and validate) the Envoy config."""
    from dynaseal_launcher import envoy_config

    cfg = load_config(args.config)
    text = envoy_config.render(cfg, Path(args.access_log) if args.access_log else paths_of(cfg).access_log,
                               authz_host=args.authz_host)
    out = Path(args.out)
    out.write_text(text)
    # With gateway.tls, the secret resource Envoy reads the certificate through, beside the config.
    if (sds := envoy_config.tls_sds(cfg)) is not None and cfg.gateway.tls is not None:
        sds_out = out.parent / Path(cfg.gateway.tls.sds_file).name
        sds_out.write_text(sds)
        _say(f"wrote {sds_out} (mount it at {cfg.gateway.tls.sds_file})")
    if args.validate:
        ok, output = envoy_config.validate(out)
        if not ok:
            print(output, file=sys.stderr)
            return 1
    _say(f"wrote {out}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """Manage the issuer's signing keys."""
    from dynaseal.keys.signing_keystore import SigningKeyStore

    cfg = load_config(args.config)
    store = SigningKeyStore(paths_of(cfg).issuer_dir)
    if args.action == "init":
        _say(f"active signing key {store.ensure().kid} ({store.jwks_path})")
    elif args.action == "rotate":
        max_ttl = max(t.limits.max_ttl for t in cfg.tenants)
        _say(f"new active signing key {store.rotate(max_ttl).kid}; previous keys verify for {max_ttl} s more")
    elif args.action == "remove":
        if not args.kid or not store.remove(args.kid):
            _say(f"no removable key {args.kid!r} (unknown, or the only key)")
            return 1
        _say(f"removed {args.kid}: keys it signed no longer verify")
    return 0


def cmd_key_revoke(args: argparse.Namespace) -> int:
    """Revoke a dynamic key by jti in Redis."""
    import asyncio
    import time

    from redis.exceptions import RedisError

    from dynaseal.ledger.revocation import revoke_at
    from dynaseal.runtime.locations import redis_url

    cfg = load_config(args.config)
    tenants = {t.id: t for t in cfg.tenants}
    tenant = args.tenant or (next(iter(tenants)) if len(tenants) == 1 else None)
    if tenant is None or tenant not in tenants:
        _say(f"name the key's tenant with --tenant (one of: {', '.join(sorted(tenants))})")
        return 2
    exp = args.exp or time.time() + tenants[tenant].limits.max_ttl
    # One server or a redis+cluster:// URL: the services' client, on a loop of the command's own.
    try:
        asyncio.run(revoke_at(redis_url(cfg), REDIS_TIMEOUT_S, tenant, args.jti, exp, leeway_s=cfg.gateway.leeway_s))
    except (RedisError, OSError) as exc:
        _say(f"could not reach the gateway's Redis ({type(exc).__name__}): {args.jti} is not revoked, try again")
        return 1
    _say(f"revoked {args.jti} of tenant {tenant}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Check everything every service will need from the config (and the tenant store); name each problem."""
    from dynaseal_launcher.check import problems

    found, generation = problems(args.config)
    if found:
        _say(f"{len(found)} problem(s):")
        for line in found:
            print(f"  - {line}", flush=True)
        return 1
    _say(f"configuration OK (generation {generation})")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Health probe for container healthchecks: 0 when healthy, 1 otherwise (no config is read)."""
    from dynaseal_launcher.probes import grpc_serving, http_ok

    if args.kind == "grpc":
        healthy = grpc_serving(args.target, args.service or "", args.timeout)
    else:
        if args.service is not None:
            _say("an http probe takes a URL only")
            return 2
        healthy = http_ok(args.target, args.timeout)
    return 0 if healthy else 1


def _exec_service(module: str, rest: list[str]) -> int:
    """Run a service's (or tool's) `main(argv)` in this process: the same function `python -m` runs."""
    import importlib

    entry = importlib.import_module(module if module.count(".") else f"{module}.__main__")
    code: int = entry.main(rest)
    return code


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="dynaseal", description="Dynamic keys for LLM calls from the edge.")
    parser.add_argument("--config", help="config file (default: $DYNASEAL_CONFIG, ./dynaseal.yaml, "
                                         "else the bundled dev config)")
    # `--config` after the subcommand too (`dynaseal up --config X`): SUPPRESS keeps the one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="config file (as before the subcommand)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", parents=[common], help="check the config and tenant store for every service; "
                                                   "exit 1 naming each problem").set_defaults(func=cmd_check)
    sub.add_parser("up", parents=[common],
                   help="run the local stack (Envoy, authz, issuer, mock LLM, …)").set_defaults(func=cmd_up)
    demo = sub.add_parser("demo", parents=[common], help="run the stack and a demo edge client through Envoy")
    demo.add_argument("--keep-running", action="store_true", help="keep the stack up after the demo")
    demo.set_defaults(func=cmd_demo)
    env = sub.add_parser("envoy-config", parents=[common], help="render the Envoy config")
    env.add_argument("--out", required=True)
    env.add_argument("--access-log")
    env.add_argument("--authz-host")
    env.add_argument("--validate", action="store_true")
    env.set_defaults(func=cmd_envoy_config)
    keys = sub.add_parser("keys", parents=[common], help="issuer signing keys: init, rotate, remove KID")
    keys.add_argument("action", choices=["init", "rotate", "remove"])
    keys.add_argument("kid", nargs="?")
    keys.set_defaults(func=cmd_keys)
    key = sub.add_parser("key", help="dynamic keys: revoke JTI")
    key_sub = key.add_subparsers(dest="key_command", required=True)
    revoke = key_sub.add_parser("revoke", parents=[common], help="refuse a key from the next request on")
    revoke.add_argument("jti")
    revoke.add_argument("--tenant", help="the key's tenant (its `iss`); optional when the config has one tenant")
    revoke.add_argument("--exp", type=float, help="the key's exp (default: now + the largest max_ttl)")
    revoke.set_defaults(func=cmd_key_revoke)
    probe = sub.add_parser("probe", help="health probe: grpc TARGET [SERVICE] (gRPC health SERVING) | "
                                         "http URL (200); exit 0 when healthy, 1 otherwise")
    probe.add_argument("kind", choices=["grpc", "http"])
    probe.add_argument("target", help="host:port (grpc) or URL (http)")
    probe.add_argument("service", nargs="?", help="the gRPC service whose health is asked (default: the server)")
    probe.add_argument("--timeout", type=float, default=3.0, help="seconds (default: %(default)s)")
    probe.set_defaults(func=cmd_probe)
    for name in SERVICE_MODULES:
        sub.add_parser(name, help=f"run the {name} service alone", add_help=False)
    sub.add_parser("dlq", help="dead-lettered callbacks: replay [--tenant T] [--dry-run] [--max N]", add_help=False)
    sub.add_parser("status", help="pipeline lag per stage, oldest unsettled reservation, parked and DLQ counts",
                   add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dynaseal` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, word in enumerate(argv):
        if word in SERVICE_MODULES or word in TOOL_MODULES:  # pass everything through to its own parser
            config = argv[:i]
            rest = argv[i + 1:]
            if len(config) == 2 and config[0] == "--config":
                rest = ["--config", config[1], *rest]
            return _exec_service(SERVICE_MODULES.get(word) or TOOL_MODULES[word], rest)
        if not word.startswith("-") and (i == 0 or argv[i - 1] != "--config"):
            break
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"dynaseal: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"dynaseal: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
