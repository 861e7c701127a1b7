"""`python -m dataflow.proxy` (and `dataflow-proxy`): the proxy scheduler, or a client of it.

python -m dataflow.proxy [serve] [--pipelines PATH...] [--port 10101] ...   = dataflow proxy
python -m dataflow.proxy load FILE... | unload NAME | status [NAME]         = dataflow load ...

The commands are those of `dataflow` (`dataflow.cli.proxy`, where this entry point's code is);
this module keeps the older spelling working.
"""

from dataflow.cli.proxy import proxy_main as main

__all__ = ["main"]

if __name__ == "__main__":
    main()
