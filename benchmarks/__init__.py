"""Benchmarks: freshproc side by side with its peers and the raw limits, in one run.

``python -m benchmarks.run [--quick] [--out DIR]`` runs every (contender, workload) job in
its own fresh interpreter, interleaving rounds, and writes a markdown table and JSON.
``--baseline DIR`` or ``--baseline-ref REV`` also measures an older freshproc in the same run.
"""
