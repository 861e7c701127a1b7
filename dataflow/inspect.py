"""`python -m dataflow.inspect`: the same as `dataflow inspect` (`dataflow.cli.tools`; the
reader is `dataflow.reader`)."""

if __name__ == "__main__":
    from dataflow.cli.tools import inspect_main

    inspect_main()
