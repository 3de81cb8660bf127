"""`python -m e2e.demo --worker [--keep]`: the demo's worker process, started by `nftproxy demo`
(e2e.demo.launcher.run_demo) in a session of its own."""

import sys

from e2e.demo.launcher import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
