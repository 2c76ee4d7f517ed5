"""SecantusDB's server as the local stack runs it: `secantusd-py`, with CPython's full collections made rare.

The server holds every document as Python objects. With CPython's default GC thresholds a
full collection walks that whole heap every few thousand requests, so the larger the
collection, the more of a scan goes to the collector. Measured on this machine (500,000
products, one `_id`-order scan after a warm-up): default thresholds 16.2 s, of which 11 full
collections took 4.5 s; with `GC_THRESHOLDS` 12.3 s, with no full collection. Reference
cycles are still collected, by the young generations.

`python local/secantus_server.py ARGS` takes `secantusd-py`'s arguments.
"""

import gc
import sys

from secantus.cli import main

#: Objects allocated before a young collection, and young collections per older one.
GC_THRESHOLDS = (50_000, 50, 1_000)

if __name__ == "__main__":
    gc.set_threshold(*GC_THRESHOLDS)
    sys.argv[0] = "secantusd-py"
    sys.exit(main())
