"""Compile the project's .proto files into `dynaseal/pb/` with grpcio-tools.

    python protos/generate.py            # regenerate the committed code
    python protos/generate.py --out DIR  # generate elsewhere (the test compares the two)

protoc writes `dynaseal/v1/usage_event_pb2.py` (the proto's own path, which stays the descriptor's
file name); the files are flattened into one package so imports read `dynaseal.pb.usage_event_pb2`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO = PROTO_ROOT.parent
DEFAULT_OUT = REPO / "dynaseal" / "pb"
PROTOS = ("dynaseal/v1/usage_event.proto",)


def generated_names(proto: str) -> list[str]:
    """The files protoc writes for one proto (module and type stub), without directories."""
    stem = Path(proto).stem
    return [f"{stem}_pb2.py", f"{stem}_pb2.pyi"]


def generate(out_dir: Path) -> list[Path]:
    """Compile every proto into out_dir; return the files written."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for proto in PROTOS:
            code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}",
                                f"--pyi_out={tmp}", str(PROTO_ROOT / proto)])
            if code != 0:
                raise RuntimeError(f"protoc failed on {proto} (exit {code})")
            for name in generated_names(proto):
                target = out_dir / name
                shutil.copyfile(Path(tmp) / Path(proto).parent / name, target)
                written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """Regenerate the code; print what was written."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: dynaseal/pb)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
