"""`python -m profiling ...` is `torchext-profile ...`."""

from profiling.cli import main

raise SystemExit(main())
