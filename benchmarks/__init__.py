"""The benchmark harness of issue 6: the proxy against nginx and a minimal aiohttp proxy.

    python -m benchmarks            # the full run, 5 rounds
    python -m benchmarks --quick    # two short rounds, about 2 minutes

Modules: ``run`` (the command: rounds, order, output), ``lab`` (upstreams and the four
variants), ``workloads`` (one measurement each), ``report`` (ratios, targets, Markdown),
``procs`` (pinned processes, ``/proc`` figures), ``nginx`` (its configurations), and the
processes the lab starts: ``minimal_proxy``, ``upstream_sink``, ``token_endpoint``.
See BENCHMARKS.md. Never run by the test suite.
"""
