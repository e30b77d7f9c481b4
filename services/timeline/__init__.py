"""timeline: the append-only, hash-chained record of every incident and case, with its APIs."""
