"""`dynaseal up` and `dynaseal demo`: start the stack, report where it listens, stop it cleanly."""

from __future__ import annotations

import signal
import time
from types import FrameType

from dynaseal.config import load_config, resolve_config_path
from dynaseal_launcher.stack import LocalStack


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _say(line: str) -> None:
    print(f"dynaseal: {line}", flush=True)


def run_stack(config: str | None, demo: bool, keep_running: bool = False) -> int:
    """Run the stack (and the demo); return the process exit code."""
    cfg = load_config(config)
    stack = LocalStack(cfg, resolve_config_path(config))
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        specs = stack.start(_say)
        width = max(len(s.name) for s in specs)
        _say("stack is up:")
        for spec in specs:
            print(f"  {spec.name:<{width}}  {spec.address}", flush=True)
        print(f"  {'logs':<{width}}  {stack.supervisor.log_dir}", flush=True)
        if demo:
            from dynaseal_launcher.edge_demo import run_demo

            code = run_demo(cfg, stack.access_log, expect_callback=stack.pipeline_enabled)
            if not keep_running:
                return code
        _say("press Ctrl-C to stop")
        while True:
            dead = stack.supervisor.dead()
            if dead is not None:
                _say(f"{dead.spec.name} exited with code {dead.process.returncode}; "
                     f"see {dead.log_path}. Stopping everything.")
                return 1
            time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):
        print(flush=True)
        return 0
    finally:
        _say("stopping …")
        stack.stop()
        signal.signal(signal.SIGTERM, previous)
        _say("stopped")

