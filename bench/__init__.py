"""Benchmarks: `./run.sh bench <name> [key=value ...]` (`python -m bench <name> ...`).

Why a package of its own: benchmarks compare methods on real data through the real pipeline, so
they are slower than tests and write tables instead of asserting; each one is a module with
`main(argv) -> int`, registered in `bench.__main__.BENCHES`.
`bench.datasets` arranges small real datasets (ORL faces, Omniglot) in competition formats.
"""
