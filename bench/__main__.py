"""`make bench`: start-up time, then the data layer's figures, each beside a raw baseline
from the same run. `python -m bench startup` measures start-up alone (no database needed)."""

from __future__ import annotations

import sys

from bench import datalayer_bench, startup_bench


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["startup"]:
        return startup_bench.main(argv[1:])
    startup = startup_bench.main([])
    print()
    return datalayer_bench.main(argv) or startup


if __name__ == "__main__":
    sys.exit(main())
