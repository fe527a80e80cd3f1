"""Helpers shared by the tests, the benchmarks and the load tests; not part of the installed package.

- ``mellum``: random Mellum2 configurations and checkpoints (a tiny one, a real-width slice).
- ``gguf_write``: a checkpoint written as GGUF, for the GGUF reader's tests and for llama.cpp.
- ``data``: where the shared evaluation data lies, and stable passage ids.
- ``server_process``: a ``focal serve`` child process on loopback, started until healthy.
- ``ports``: a free loopback port.
"""
