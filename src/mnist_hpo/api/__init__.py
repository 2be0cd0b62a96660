"""The Python API (`import mnist_hpo`): studies (create, load, list, delete), their workers
(work), trials, best trial, plots, report and export as typed calls that return records and raise
the project's errors; the CLI is a layer over it. Users reach it as `mnist_hpo.create_study` and
so on (the top-level package's names, imported on first use)."""
