"""Closed-loop evaluation in the simulators, with reports (see docs/evaluation.md).

`dexvla.eval.evaluate.evaluate(EvalConfig(...))` runs it; `dexvla eval` is the command. This
package file imports nothing so that the command line stays quick to start.
"""

DEFAULT_EVAL_SEED = 100_000
"""First evaluation seed: far from `dexvla collect`'s default seeds (0, 1, 2, ...)."""
