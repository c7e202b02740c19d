"""`python -m bench.callback_body_ab --before REV`: the consumer's per-event Python, REV against the working tree.

Two steps of every event the consumer delivers, in process, CPU µs per access-log line: `parse_line` (log line
→ UsageEvent) and `callback_body` (event → signed-to-be bytes). The same lines (`bench.pipeline_bench`'s mix)
go through REV's code (`git archive`) and the working tree's in turn, `--rounds` times, each in a fresh process.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.ab import export
from bench.pipeline_bench import REPO, access_line

# Runs in a fresh process with TREE first on the path; prints "parse µs, body µs" per line (median of 5 passes).
STEPS = """import sys, time
tree, lines_file = sys.argv[1], sys.argv[2]
sys.path.insert(0, tree)
import dynaseal
from dynaseal.usage.callbacks import callback_body
from dynaseal.usage.events import parse_line
assert dynaseal.__file__.startswith(tree), dynaseal.__file__
lines = open(lines_file, 'rb').read().splitlines()
events = [e for e in (parse_line(line) for line in lines) if e is not None]
def per_line(step):
    spent = []
    for _ in range(5):
        start = time.process_time(); step(); spent.append(time.process_time() - start)
    return sorted(spent)[2] / len(lines) * 1e6
print(per_line(lambda: [parse_line(line) for line in lines]),
      per_line(lambda: [callback_body(e, True) for e in events]))
"""


def measure(tree: Path, lines_file: Path) -> tuple[float, float]:
    """(parse_line µs, callback_body µs) per line, run from `tree`."""
    done = subprocess.run([sys.executable, "-c", STEPS, str(tree), str(lines_file)], capture_output=True, text=True,
                          check=True, cwd=tempfile.gettempdir())
    parse, body = done.stdout.split()
    return float(parse), float(body)


def main(argv: list[str] | None = None) -> int:
    """Alternate before and after; print each round and the median ratios."""
    parser = argparse.ArgumentParser(prog="python -m bench.callback_body_ab", description=__doc__)
    parser.add_argument("--before", required=True, help="the git revision to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lines", type=int, default=5000)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dynaseal-callback-body-ab-"))
    tree = export(args.before, work / "before-tree")
    rng = random.Random(7)
    lines_file = work / "lines.jsonl"
    lines_file.write_bytes(b"".join(access_line(f"bench-key-{rng.randrange(200)}", rng)[1] for _ in range(args.lines)))
    print(f"| round | parse_line µs before | after | callback_body µs before ({args.before}) | after |\n"
          "|---|---:|---:|---:|---:|")
    ratios: list[tuple[float, float]] = []
    for n in range(1, args.rounds + 1):
        (pb, bb), (pa, ba) = measure(tree, lines_file), measure(REPO, lines_file)
        ratios.append((pa / pb, ba / bb))
        print(f"| {n} | {pb:.1f} | {pa:.1f} | {bb:.1f} | {ba:.1f} |", flush=True)
    print(f"\nMedian ratio after / before: parse_line {statistics.median(r[0] for r in ratios):.2f}, "
          f"callback_body {statistics.median(r[1] for r in ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
