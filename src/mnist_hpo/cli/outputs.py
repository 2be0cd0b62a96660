"""Commands that show or use results: dashboard, report, export-best, predict."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mnist_hpo.cli.app import app
from mnist_hpo.cli.common import (
    ArtifactsOpt,
    CacheOpt,
    DataDirOpt,
    DownloadOpt,
    StorageOpt,
    StudyArg,
    command,
    pct,
    reading,
    storage_url,
    trials,
)
from mnist_hpo.settings import default_artifacts


@app.command()
@command
def dashboard(
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on. The dashboard has NO authentication and can delete "
            "studies: keep 127.0.0.1, or put an authenticating proxy in front."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8080,
    artifacts: ArtifactsOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Serve optuna-dashboard on the study storage (history, pruning, importances, trials)."""
    from mnist_hpo.outputs import dashboard as dashboard_mod
    from mnist_hpo.resilience.stop import sigterm_as_ctrl_c
    from mnist_hpo.resilience.storage import redact

    url = storage_url(storage)
    location = artifacts or default_artifacts()
    with reading("opening the dashboard"):
        server = dashboard_mod.open_dashboard(url, host=host, port=port, artifacts_at=location)
    typer.echo(
        f"storage: {redact(url)} ({len(server.studies)} studies); "
        f"artifacts: {server.artifact_location}"
    )
    if not server.local_only:
        typer.secho(
            f"warning: listening on {host}, not only this machine: optuna-dashboard has no "
            "authentication and can delete studies",
            fg=typer.colors.YELLOW,
            err=True,
        )
    typer.echo(f"dashboard: {server.url} (Ctrl-C to stop)")
    sys.stdout.flush()
    sigterm_as_ctrl_c()  # docker stop / Kubernetes: stop as on Ctrl-C, not mid-response
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("dashboard stopped")
    finally:
        server.close()


@app.command()
@command
def report(
    study: StudyArg,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="HTML file to write (default: STUDY-report.html)."),
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Trials in the top-trials table.")] = 10,
    storage: StorageOpt = None,
) -> None:
    """Write a self-contained HTML report: history, pruning, importances, top trials."""
    from mnist_hpo.api import studies as api

    out = output or Path(f"{study}-report.html")
    api.load_study(study, storage=storage_url(storage), read_only=True).report(out, top=top)
    typer.echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB; opens offline in any browser)")


@app.command("export-best")
@command
def export_best(
    study: StudyArg,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write (default: STUDY-best.safetensors)."),
    ] = None,
    trial: Annotated[
        int | None,
        typer.Option(min=0, help="Export this completed trial instead of the best one."),
    ] = None,
    ensemble: Annotated[
        bool,
        typer.Option(
            "--ensemble",
            help="Write the ensemble `mnist-hpo ensemble` recorded on the study: every member "
            "with its weight, in one file (default: STUDY-ensemble.safetensors).",
        ),
    ] = False,
    device: Annotated[
        str | None,
        typer.Option(help="Run on this device (default: the one the trial recorded)."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1, help="Torch CPU threads for a retrain (default: the worker's, as recorded)."
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    cache: CacheOpt = None,
    download: DownloadOpt = True,
    artifacts: ArtifactsOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Save the best trial's model for `predict`: its kept weights, copied (seconds), checked
    to score exactly the validation accuracy the trial recorded; retrained from its recorded
    params, seed, threads and precision only when it kept none.

    The file is safetensors: tensors plus a JSON header with the family, parameters,
    normalisation and accuracies. Loading it never unpickles anything.
    """
    import time

    from mnist_hpo.api import studies as api

    found = api.load_study(study, storage=storage_url(storage), read_only=True)
    options: dict[str, Any] = {
        "data_dir": data_dir,
        "cache": cache,
        "download": download,
        "artifacts": artifacts or default_artifacts(),
    }
    started = time.perf_counter()
    if ensemble:
        done = found.export_best(output, ensemble=True, **options)
        m = done.meta
        typer.echo(
            f"wrote {done.path}: ensemble of {trials(len(m['members']))} of "
            f"{', '.join(m['recorded']['studies'])} ({m['n_params']:,} parameters) in "
            f"{time.perf_counter() - started:.1f} s"
        )
        typer.echo(
            f"validation {pct(m['validation_accuracy'])}, test {pct(m['test_accuracy'])} (the "
            f"selection measured {pct(m['recorded']['val_accuracy'])} / "
            f"{pct(m['recorded']['test_accuracy'])} on float16 probabilities)"
        )
        return
    done = found.export_best(
        output,
        trial=trial,
        device=device,
        threads=threads,
        message=lambda m: typer.echo(m),
        **options,
    )
    m = done.meta
    typer.echo(
        f"wrote {done.path}: trial {m['trial']} of {study} ({m['family']}, "
        f"{m['n_params']:,} parameters), weights {m['weights_from']}, in "
        f"{time.perf_counter() - started:.1f} s"
    )
    typer.echo(
        f"validation {pct(m['validation_accuracy'])}, test {pct(m['test_accuracy'])} "
        f"(the trial recorded {pct(m['recorded']['validation_accuracy'])} / "
        f"{pct(m['recorded']['test_accuracy'])})"
        + (": exactly reproduced" if done.reproduced else "")
    )
    if not done.reproduced:
        typer.secho(
            "warning: the exported weights do not score exactly what the trial recorded "
            "(another device or thread count rounds differently); the file records both",
            fg=typer.colors.YELLOW,
            err=True,
        )


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


@app.command()
@command
def predict(
    model: Annotated[Path, typer.Argument(help="A file written by export-best.")],
    images: Annotated[
        list[Path],
        typer.Argument(help="28x28 grayscale PNGs (colour is converted) or an MNIST IDX file."),
    ],
    invert: Annotated[
        bool, typer.Option(help="Invert the images first (for dark digits on a light background).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines for scripts.")] = False,
) -> None:
    """Classify digit images with an exported model: digit and confidence for each.

    Images must be 28x28 MNIST-style: a white digit on a black background. Other sizes are
    refused (resizing a photo does not make an MNIST digit).
    """
    import time

    from mnist_hpo.api.model import load_model
    from mnist_hpo.outputs.predict import read_images

    loaded = load_model(model)
    m = loaded.meta
    if not as_json and loaded.is_ensemble:
        typer.echo(
            f"model: ensemble of {trials(len(m['members']))} of "
            f"{', '.join(m['recorded']['studies'])}, validation "
            f"{pct(m['validation_accuracy'])}, test {pct(m['test_accuracy'])}"
        )
    elif not as_json:
        typer.echo(
            f"model: trial {m['trial']} of {m['study']} ({m['family']}), validation "
            f"{pct(m['validation_accuracy'])}, test {pct(m['test_accuracy'])}"
        )
        smoothing = float((m.get("params") or {}).get("label_smoothing") or 0)
        if smoothing:  # the training target of the right digit is 1 - s + s/10, not 1
            typer.echo(
                f"  trained with label smoothing {smoothing:g}: confidence tops out near "
                f"{100 * (1 - smoothing * 0.9):.0f}% even on clean digits, by design"
            )
    inverted, seconds, count = 0, 0.0, 0
    for path in images:
        pixels, names = read_images(path)  # read apart: the latency is the model's alone
        started = time.perf_counter()
        predictions = loaded.predict(pixels, names=names, invert=invert)
        seconds += time.perf_counter() - started
        count += len(predictions)
        for p in predictions:
            inverted += p.looks_inverted
            if as_json:
                record = {"image": p.name, "digit": p.digit, "confidence": p.confidence}
                typer.echo(json.dumps(record))
            else:
                typer.echo(f"{p.name}: {p.digit} ({pct(p.confidence)})")
    if not as_json and count:
        typer.echo(
            f"latency: {1000 * seconds / count:.3f} ms per image ({count} image(s) in batches, "
            f"{torch_threads()} CPU thread(s))"
        )
    if inverted:
        typer.secho(
            f"warning: {inverted} image(s) have a bright border, but MNIST digits are white on "
            "black; if they are dark on light, pass --invert",
            fg=typer.colors.YELLOW,
            err=True,
        )
