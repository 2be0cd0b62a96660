"""mnist-hpo: a hyperparameter search service for MNIST model families, built on Optuna."""

__version__ = "0.1.0"
