"""Door state: the faust tables and their recovery."""
