"""The ``safehub`` command line: the dev hub, the demo and the reviewer's timeline commands."""
