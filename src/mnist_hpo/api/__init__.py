"""The Python API (`import mnist_hpo`): studies, their workers, trials, plots and exports as
typed calls that return values and raise the project's errors; the CLI is a layer over it."""
