"""Run the benchmark of ``python -m activity bench`` from a checkout.

    python benchmarks/run.py --json benchmarks/results.json

takes the same options as ``python -m activity bench`` (see ``--help``). The
peers come with ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import sys

from activity._bench import main

if __name__ == "__main__":
    sys.exit(main())
