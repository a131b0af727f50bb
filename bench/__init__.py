"""Fleet's benchmarks: ``python -m bench [fanout|scale|throughput|api|compare|idle|all]``.

See ``bench/README.md`` for what each one measures, how to run them, and the latest figures.
Every benchmark starts real processes (``fleet-server``, agents, load generators, sshd), is
bounded in time, and cleans up its processes and temporary directories even when it fails.
"""
