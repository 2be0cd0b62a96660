"""The ML core: trainer, data, search-space primitives, devices. Never imports Optuna or SQL."""
