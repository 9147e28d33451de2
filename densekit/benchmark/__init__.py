"""``densekit benchmark``: label-fraction benchmarks of heads and baselines from task cards."""

from densekit.benchmark.card import Card, Overrides, Run, load_card
from densekit.benchmark.run import run_benchmark

__all__ = ["Card", "Overrides", "Run", "load_card", "run_benchmark"]
