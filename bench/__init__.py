"""syncd benchmarks: syncd side by side with mbsync, offlineimap3, getmail6 and fetchmail.

Run from the repository root: ``python -m bench.run --help`` (or ``make bench`` /
``make bench-quick``). See bench/README.md.
"""
