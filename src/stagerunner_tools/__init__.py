"""The harness around the runtime: the benchmark, the chaos run, and the support library
the tests, ``bin/bench`` and ``bin/chaos`` share (/proc reading, run records, a private
PostgreSQL server, database helpers).

Not part of the installed ``stagerunner`` package: ``bin/bench`` and ``bin/chaos`` put
``src/`` on the path, and so does the test suite. The runtime never imports it.
"""
