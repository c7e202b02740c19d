"""Money: price tables, exact costs, and budget thresholds."""
