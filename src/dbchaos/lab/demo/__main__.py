"""``python -m dbchaos.lab.demo --dsn DSN [--port N] [--mode naive|hardened]``: run the demo shop."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from dbchaos.lab.demo.app import create_app
from dbchaos.lab.demo.config import DemoConfig, Mode
from dbchaos.lab.demo.migrate import upgrade_head
from dbchaos.lab.demo.seed import seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dbchaos.lab.demo", description=__doc__)
    parser.add_argument("--dsn", required=True, help="the shop's database (libpq DSN or URI)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.NAIVE.value)
    parser.add_argument("--pool-timeout", type=float, default=None, help="naive mode's pool timeout (default 30 s)")
    parser.add_argument("--migrate", action="store_true", help="run `alembic upgrade head` and seed first")
    args = parser.parse_args(argv)
    if args.migrate:
        run = upgrade_head(args.dsn)
        print(run.output, file=sys.stderr)
        if not run.ok:
            return 1
        seed(args.dsn)
    config = DemoConfig(args.dsn, Mode(args.mode), args.pool_timeout)
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
