"""`python -m mnist_hpo` runs the CLI (what `work --jobs N` uses to start its worker processes)."""

from mnist_hpo.cli import main

main()
