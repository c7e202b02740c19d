"""`python -m bench.hand_written_ab [--only NAME] [--rounds N]`: each hand-written hot-path piece beside the
library it stands in for, in one process, rounds interleaved.

Every case runs its variants in turn, once per round (the order rotates from round to round, so a busy
moment of the machine hits all alike), and reports CPU µs per operation (`time.process_time`, this process
only: the Redis server and the HTTP receiver run apart) and, per round, each variant's ratio to the first
one, the project's piece. Cases:
- `request_id`: the gateway request id (`dynaseal.policy.request_ids`) vs `uuid.uuid4` and `uuid_utils.uuid4`, and
  the hand-written pool it was until `HAND_WRITTEN_REV` (that commit's module, read with `git show`);
- `strict_json`: `dynaseal.jsonsafe.loads_strict` on the bench body vs `json.loads` and `orjson.loads`
  (what refusing duplicate keys, NaN and lone surrogates costs);
- `redis_admit`: authz's decision with its Redis admission on the pipelined client
  (`dynaseal.ledger.redis_pipeline`) vs redis-py's asyncio client (the pool `RedisQuota.from_url` gives it),
  one and 16 at a time, against a real Redis;
- `callback_post`: the consumer's callback POST (`callback_consumer.http_client`) vs httpx's and aiohttp's
  async clients and the hand-written asyncio + h11 client of `HAND_WRITTEN_REV`, keep-alive, one and 16 at a
  time, against `bench.post_receiver` in its own process;
- `dpop_proof`: a DPoP proof's check (`dynaseal.keys.dpop.verify_proof`) vs PyJWT's `jwt.decode` with the
  proof's own key and the same request checks.
`--record` appends the table to bench/RESULTS.md with the command, commit and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import orjson

from bench.authz_stages import median_us
from bench.fixture import BODY, make_keys
from bench.results import REPO, RESULTS, git_commit, machine

Measure = Callable[[], float]  # one batch of the variant: CPU µs per operation


@dataclass
class Variant:
    """One way of doing the case's operation, and its samples (one per round)."""

    name: str
    measure: Measure
    against: int = 0  # the index of the variant its ratio is taken to (the project's piece, same load)
    samples: list[float] = field(default_factory=list)


@dataclass
class Case:
    """A piece of the project and the libraries it is compared with (the project's piece first)."""

    title: str
    variants: list[Variant]


def interleave(variants: list[Variant], rounds: int) -> None:
    """Run every variant once per round, the order rotated each round."""
    for n in range(rounds):
        for variant in variants[n % len(variants):] + variants[:n % len(variants)]:
            variant.samples.append(variant.measure())


def table(case: Case) -> list[str]:
    """Median µs/op per variant and the median of its per-round ratios to the variant it is compared with."""
    lines = [f"**{case.title}**", "",
             "| variant | CPU µs/op (median) | rounds (µs/op) | ÷ the project's, median of rounds |",
             "|---|---:|---|---:|"]
    for v in case.variants:
        base = case.variants[v.against]
        ratio = statistics.median(s / b for s, b in zip(v.samples, base.samples, strict=True))
        rounds = ", ".join(f"{s:.2f}" if s < 10 else f"{s:.1f}" for s in v.samples)
        lines.append(f"| {v.name} | {statistics.median(v.samples):.2f} | {rounds} | {ratio:.2f} |")
    return [*lines, ""]


# A commit on main with the hand-written pieces since replaced, measured beside their replacements.
HAND_WRITTEN_REV = "2dd277b"


def module_at(rev: str, path: str) -> ModuleType:
    """The module `path` as it was at `rev` (git show), imported under a name of its own."""
    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout
    name = f"_at_{rev}_" + path.removesuffix(".py").replace("/", "_")
    module = ModuleType(name)
    module.__file__ = f"{rev}:{path}"
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def request_id_case(rounds: int, ops: int) -> Case:
    """The gateway's request id against the libraries that mint UUID4 text."""
    import uuid_utils

    from dynaseal.policy.request_ids import new_request_id

    pool: Callable[[], str] = module_at(HAND_WRITTEN_REV, "dynaseal/policy/request_ids.py").new_request_id
    variants = [Variant("dynaseal `new_request_id`", lambda: median_us(new_request_id, ops, 1)),
                Variant("`str(uuid.uuid4())` (stdlib)", lambda: median_us(lambda: str(uuid.uuid4()), ops, 1)),
                Variant("`str(uuid_utils.uuid4())`", lambda: median_us(lambda: str(uuid_utils.uuid4()), ops, 1)),
                Variant(f"the hand-written urandom pool (`{HAND_WRITTEN_REV}`)", lambda: median_us(pool, ops, 1))]
    interleave(variants, rounds)
    return Case("request id: one UUID4 as text (`dynaseal/policy/request_ids.py`)", variants)


def strict_json_case(rounds: int, ops: int) -> Case:
    """The strict parse of a request body against the plain parsers (which accept duplicates)."""
    from dynaseal.jsonsafe import loads_strict

    variants = [Variant("`loads_strict` (duplicates, NaN, lone surrogates refused)",
                        lambda: median_us(lambda: loads_strict(BODY), ops, 1)),
                Variant("`json.loads` (stdlib, last duplicate wins)",
                        lambda: median_us(lambda: json.loads(BODY), ops, 1)),
                Variant("`orjson.loads` (last duplicate wins)",
                        lambda: median_us(lambda: orjson.loads(BODY), ops, 1))]
    interleave(variants, rounds)
    return Case(f"strict JSON: the {len(BODY)}-byte bench body (`dynaseal/jsonsafe.py`)", variants)


def redis_admit_case(rounds: int, ops: int) -> Case:
    """authz's decision with the Redis admission on each client (bench.hand_written_io)."""
    from bench import hand_written_io

    return hand_written_io.redis_admit_case(rounds, ops)


def callback_post_case(rounds: int, ops: int) -> Case:
    """The consumer's callback POST on each client (bench.hand_written_io)."""
    from bench import hand_written_io

    return hand_written_io.callback_post_case(rounds, ops)


def _pyjwt_proof_check(proof: str, *, method: str, url: str, now: float, leeway_s: int, access_token: str,
                       jkt: str) -> str:
    """The same checks as `verify_proof`, the JWS and its claims read by PyJWT; the proof's jti."""
    import jwt

    from dynaseal.keys.dpop import ALGORITHMS, PROOF_WINDOW_S, access_token_hash, thumbprint

    header = jwt.get_unverified_header(proof)
    if header.get("typ") != "dpop+jwt" or header.get("alg") not in ALGORITHMS:
        raise ValueError("typ or alg")
    if thumbprint(header["jwk"]) != jkt:
        raise ValueError("jkt")
    key = jwt.PyJWK(header["jwk"], header["alg"]).key
    claims = jwt.decode(proof, key, algorithms=[header["alg"]], options={"require": ["jti", "htm", "htu", "iat"],
                                                                          "verify_iat": False})
    if claims["htm"] != method or claims["htu"] != url or abs(now - float(claims["iat"])) > PROOF_WINDOW_S + leeway_s:
        raise ValueError("htm, htu or iat")
    if claims.get("ath") != access_token_hash(access_token):
        raise ValueError("ath")
    return str(claims["jti"])


def dpop_proof_case(rounds: int, ops: int) -> Case:
    """A DPoP proof's check (each request of a bound key pays one), EdDSA, by the project and by PyJWT."""
    from dynaseal.keys.dpop import verify_proof
    from dynaseal.keys.mint import HolderKey

    token = make_keys().token
    holder = HolderKey.generate()
    url = "http://127.0.0.1:8000/v1/chat/completions"
    proof, jkt, now = holder.proof("POST", url, token), holder.jkt(), time.time()
    ours = verify_proof(proof, method="POST", url=url, now=now, leeway_s=30, access_token=token, jkt=jkt)
    assert ours.jti == _pyjwt_proof_check(proof, method="POST", url=url, now=now, leeway_s=30, access_token=token,
                                          jkt=jkt)
    variants = [
        Variant("`verify_proof` (PyJWT's algorithm objects, strict JSON, canonical base64url)",
                lambda: median_us(lambda: verify_proof(proof, method="POST", url=url, now=now, leeway_s=30,
                                                       access_token=token, jkt=jkt), ops, 1)),
        Variant("PyJWT `jwt.decode` + the same claim checks",
                lambda: median_us(lambda: _pyjwt_proof_check(proof, method="POST", url=url, now=now, leeway_s=30,
                                                             access_token=token, jkt=jkt), ops, 1)),
    ]
    interleave(variants, rounds)
    return Case("DPoP proof check, EdDSA (`dynaseal/keys/dpop.py`)", variants)


CASES: dict[str, tuple[Callable[[int, int], Case], int]] = {
    # name: (case, operations per batch)
    "request_id": (request_id_case, 100_000),
    "strict_json": (strict_json_case, 20_000),
    "redis_admit": (redis_admit_case, 3_000),
    "callback_post": (callback_post_case, 2_000),
    "dpop_proof": (dpop_proof_case, 2_000),
}


def _load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    """Run the cases asked for, print their tables; `--record` appends them to bench/RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.hand_written_ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(CASES), action="append", help="run only this case (repeatable)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every case's operations per batch")
    parser.add_argument("--record", action="store_true", help="append the tables to bench/RESULTS.md")
    args = parser.parse_args(argv)
    started, load_before = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), _load_average()
    lines: list[str] = []
    for name in args.only or list(CASES):
        case, ops = CASES[name]
        section = table(case(args.rounds, max(1, int(ops * args.scale))))
        print("\n".join(section), flush=True)
        lines += section
    if args.record:
        command = "python -m bench.hand_written_ab " + " ".join(argv if argv is not None else sys.argv[1:])
        head = [f"## {started} · commit `{git_commit()}` · hand-written pieces beside their libraries", "",
                f"- command: `{command.strip()}`", f"- machine: {machine()}; load average {load_before} "
                f"before, {_load_average()} after (`uptime`)", f"- {args.rounds} rounds, interleaved; CPU of this "
                "process only (`time.process_time`)", ""]
        with RESULTS.open("a") as f:
            f.write("\n" + "\n".join(head + lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
