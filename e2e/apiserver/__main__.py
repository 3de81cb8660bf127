"""Run the stand-in API server in the foreground (for manual runs and e2e scripts).

    python -m e2e.apiserver --port 8080 --service-cidr 198.19.0.0/16 --kubeconfig-out /tmp/kc
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .server import ApiServerStandin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.apiserver", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--service-cidr", default="198.19.0.0/16",
                        help='one CIDR, or "v4,v6" for dual-stack')
    parser.add_argument("--node-port-range", default="30000-32767")
    parser.add_argument("--bookmark-interval", type=float, default=60.0)
    parser.add_argument("--history-size", type=int, default=1000)
    parser.add_argument("--kubeconfig-out", default=None, help="write a kubeconfig pointing at the server here")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    api = ApiServerStandin(host=args.host, port=args.port, service_cidr=args.service_cidr,
                           node_port_range=args.node_port_range, bookmark_interval=args.bookmark_interval,
                           history_size=args.history_size, kubeconfig_path=args.kubeconfig_out,
                           seed=args.seed, verbose=args.verbose)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with api:
        print(f"serving {api.url} kubeconfig={api.kubeconfig_path}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
