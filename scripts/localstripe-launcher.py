"""Runs the localstripe Stripe emulator on a loopback address, without persistence.

localstripe's own CLI listens on every interface and, after every write, pickles its whole
store to one fixed file in the system temp directory that every instance on the machine
shares (and that slows writes down as data grows). This launcher serves the same aiohttp
application on 127.0.0.1 only and keeps the store in memory.
"""

import argparse
import ipaddress
import logging

from aiohttp import web
from localstripe import resources, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--access-log", action="store_true", help="log every request")
    args = parser.parse_args()

    if not ipaddress.ip_address(args.host).is_loopback:
        raise SystemExit(f"refusing to bind {args.host}: localstripe must stay on loopback")

    # The store stays a dict in memory; nothing is written to the shared pickle file.
    resources.Store.dump_to_disk = lambda self: None

    logging.basicConfig(level=logging.INFO)
    access_log = logging.getLogger("aiohttp.access") if args.access_log else None
    web.run_app(server.app, host=args.host, port=args.port, access_log=access_log)


if __name__ == "__main__":
    main()
