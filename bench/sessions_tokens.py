"""What reward sessions' two checks cost, each call on its own: checking a Mini App's
initData (init-data-py's validate_by_hash, through gateway.sessions.initdata), issuing a
ymid and verifying one. The reference in the same run is one HMAC-SHA256 of a ymid's
34 bytes (the least any signed token costs), so the figures are read as ratios too.

    .venv/bin/python bench/sessions_tokens.py [--rounds 5] [--number 20000]

Prints the median microseconds per call over the rounds, and each over the reference.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import statistics
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.sessions.initdata import telegram_user
from gateway.sessions.ymid import YmidSigner
from tests.support.telegram import TEST_BOT_TOKEN, signed_init_data

NOW = 1_800_000_000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=20_000)
    args = parser.parse_args()
    signer = YmidSigner([b"k" * 32], context="tapper")  # as a route signs
    ymid = signer.issue(279058397, expires=int(NOW) + 3600)
    init_data = signed_init_data(279058397, int(NOW) - 60)
    body = bytes(34)
    cases = {
        "reference: one HMAC-SHA256": lambda: hmac.digest(b"k" * 32, body, hashlib.sha256),
        "issue a ymid": lambda: signer.issue(279058397, expires=int(NOW) + 3600),
        "verify a ymid": lambda: signer.verify(ymid, now=NOW),
        "check initData": lambda: telegram_user(init_data, TEST_BOT_TOKEN, max_age=3600, now=NOW),
    }
    medians = {}
    for name, call in cases.items():
        runs = [timeit.timeit(call, number=args.number) for _ in range(args.rounds)]
        medians[name] = statistics.median(runs) / args.number * 1e6
    reference = medians["reference: one HMAC-SHA256"]
    for name, micros in medians.items():
        print(f"{name:<28} {micros:8.2f} us   x{micros / reference:5.1f}")


if __name__ == "__main__":
    main()
