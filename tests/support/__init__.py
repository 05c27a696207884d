"""Helpers the tests share, imported as `tests.support.<module>` (never as bare modules, never from a conftest.py).

    services.py     free ports, waiting for a server, stopping a process group we started
    stack.py        the embedded stack's processes and its deployments, driven as a user does (`prefect deployment run`)
    infra_files.py  paths of the manifests in infra/ and small parsers for them
    tiny_models.py  tiny model instances with non-trivial weights
    fsdp_worker.py  one rank of the FSDP tests' gloo group (run as a script)

The conftest.py files hold fixtures only; what a test imports lives here.
"""
