"""`python -m profiling ...`: the profiler's own subcommands (run, compare); the console script
`torchext-profile` (reports/cli.py) adds those of the layers above."""

from profiling.cli import main

raise SystemExit(main(prog="python -m profiling"))
