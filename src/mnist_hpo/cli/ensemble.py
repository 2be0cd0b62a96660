"""`mnist-hpo ensemble`: greedy ensemble selection over the kept trials of one or more studies."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from mnist_hpo.cli.app import app
from mnist_hpo.cli.common import (
    ArtifactsOpt,
    CacheOpt,
    DataDirOpt,
    DownloadOpt,
    StorageOpt,
    command,
    pct,
    storage_url,
    trials,
)
from mnist_hpo.settings import default_artifacts


@app.command()
@command
def ensemble(
    studies: Annotated[
        list[str],
        typer.Argument(
            help="Study names on one storage, same dataset and validation split (cnn deep_mlp …)."
        ),
    ],
    size: Annotated[
        int | None,
        typer.Option(
            help="Picks of the greedy selection (with replacement): weights in 1/SIZE. Default: "
            "the number (1-25) that scores best on held-out halves of validation."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Breaks exact ties between candidates.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    data_dir: DataDirOpt = None,
    cache: CacheOpt = None,
    download: DownloadOpt = True,
    artifacts: ArtifactsOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Combine the studies' kept trials into a weighted ensemble, chosen on validation only.

    Caruana's ensemble selection: the 3 best trials, then greedy picks with replacement, each
    trial weighted by how often it was picked; as many picks (or the plain average of as many
    best trials) as score best on held-out halves of validation, or SIZE picks. The test
    accuracy is measured once, after the selection. The result is recorded on the first study
    (status, best --json, report, export-best --ensemble).
    """
    from mnist_hpo.api import studies as api
    from mnist_hpo.outputs.selection import how

    result = api.ensemble(
        studies,
        storage=storage_url(storage),
        size=size,
        seed=seed,
        data_dir=data_dir,
        cache=cache,
        download=download,
        artifacts=artifacts or default_artifacts(),
    ).record
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(
        f"ensemble of {trials(len(result['members']))} chosen from {result['candidates']} kept "
        f"trials of {', '.join(result['studies'])} ({how(result)}; chosen on validation only)"
    )
    typer.echo(f"  {'study':<20} {'trial':>5} {'weight':>7} {'val':>8} {'test':>8}")
    for m in result["members"]:
        typer.echo(
            f"  {m['study']:<20} {m['trial']:>5} {m['weight']:>7.2f} {pct(m['val_accuracy']):>8} "
            f"{pct(m['test_accuracy']):>8}"
        )
    typer.echo(f"validation: {pct(result['val_accuracy'])} (ensemble)")
    single = result["best_single"] or {}
    typer.echo(
        f"test, measured once after the selection: {pct(result['test_accuracy'])} (ensemble) vs "
        f"{pct(single.get('test_accuracy'))} (best single trial by validation: "
        f"{single.get('study')} trial {single.get('trial')})"
    )
    typer.echo(
        f"recorded on study {result['studies'][0]}; export it with `mnist-hpo export-best "
        f"{result['studies'][0]} --ensemble`"
    )
