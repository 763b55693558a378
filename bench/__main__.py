"""`make bench`: start-up time, then the data layer's figures, each beside a raw baseline
from the same run. `python -m bench startup` measures start-up alone (no database needed);
`python -m bench site` the site create alone; `python -m bench lifecycle` 20 sites created
serially and four at a time, their status and their renewal; `python -m bench migration
[--sizes 10k,100k]` the migration on generated data (BENCH_MIGRATION_SIZES, 1m on demand)."""

from __future__ import annotations

import sys

from bench import (
    datalayer_bench,
    migration_bench,
    site_bench,
    site_lifecycle_bench,
    startup_bench,
)


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["startup"]:
        return startup_bench.main(argv[1:])
    if argv[:1] == ["site"]:
        return site_bench.main(argv[1:])
    if argv[:1] == ["lifecycle"]:
        return site_lifecycle_bench.main(argv[1:])
    if argv[:1] == ["migration"]:
        return migration_bench.main(argv[1:])
    startup = startup_bench.main([])
    print()
    data = datalayer_bench.main(argv)
    print()
    site = site_bench.main([])
    print()
    lifecycle = site_lifecycle_bench.main([])
    print()
    return migration_bench.main([]) or lifecycle or site or data or startup


if __name__ == "__main__":
    sys.exit(main())
