"""bigactor's benchmark suite: ``python -m benchmarks`` (see ``benchmarks/README.md``).

Each figure is measured on the local system as the median of several runs, beside the floor it
is built on (the bare transport or a bare process spawn), measured in the same run.
"""
