"""Generated studies of what autograd costs: `python -m reports.generate --quick`."""
