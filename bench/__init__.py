"""Benchmarks of the Stitcher service, run by ``make bench`` (``python -m bench``).

Each benchmark is a module with a ``main()`` that prints its own report and returns its figures as a
JSON-serialisable dict; ``bench.__main__`` runs them in order and merges the figures into
``bench/out/results.json`` under the benchmark's name. Shared process/HTTP/wrk helpers are in
``bench.common``. Only 127.0.0.1 is ever contacted.
"""
