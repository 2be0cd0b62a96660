"""The view of a running search (live: rows, the study line, plain lines, JSON records), shown by
the CLI on a terminal and by the Python API in a notebook; it knows neither Typer nor IPython."""
