"""Command-line entry point: ``python -m mock_llm [--host H] [--port P] [--api-key K]``."""

from __future__ import annotations

import argparse
import importlib.util
import os

import uvicorn

from mock_llm.app import create_app

API_KEY_ENV = "MOCK_LLM_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    """Build the CLI parser (the API key default is read from the environment at call time)."""
    parser = argparse.ArgumentParser(prog="python -m mock_llm", description="Mock OpenAI-compatible upstream.")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8100, help="bind port (default: %(default)s)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV) or None,
        help=f"required bearer key (default: ${API_KEY_ENV}; unset means accept any key)",
    )
    return parser


def _available(module: str) -> bool:
    """Tell whether an optional speed-up module is importable without importing it."""
    return importlib.util.find_spec(module) is not None


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve the mock until interrupted."""
    args = build_parser().parse_args(argv)
    uvicorn.run(
        create_app(api_key=args.api_key),
        host=args.host,
        port=args.port,
        # Fastest available event loop / HTTP parser: the mock is also used for gateway benchmarks.
        loop="uvloop" if _available("uvloop") else "asyncio",
        http="httptools" if _available("httptools") else "h11",
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
