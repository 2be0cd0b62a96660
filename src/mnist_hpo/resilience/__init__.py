"""The crash-safety wall: the only package that knows SQL, locks, signals and Optuna's internals.

Everything a worker needs to survive a dead worker, a stopped one, a paused one or a lost
database lives here, behind a handful of names: `open_storage` (storage.py), `retrying`
(retry.py), `Trials` (trials.py: take a trial under the study lock, keep it alive, hand it
back), the retry policy (retries.py), `Stop` (stop.py: SIGTERM / Ctrl-C), the artifact store
every trial file goes through (artifacts.py: atomic folder writes, S3) with the one rule that
tells a full disk or a failing store from a trial's own error (environment.py) and, in one
file, every use of Optuna's private API (optuna_internals.py).
"""
