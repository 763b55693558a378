"""`make bench`: the data layer's figures, each beside a raw baseline from the same run."""

from __future__ import annotations

import sys

from bench import datalayer_bench


def main() -> int:
    return datalayer_bench.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
