"""lamina's benchmark suite: our unionfs and `lamina run` side by side with their peers.

Run it with `./dev bench` (`--quick` for a smoke run). See `benchmarks/__main__.py`.
"""
