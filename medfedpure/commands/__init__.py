"""One module per `python -m medfedpure` command; each exposes `add_parser(subparsers)` and `run(args) -> int`."""
