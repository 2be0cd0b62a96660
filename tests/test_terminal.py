"""`work --jobs 2` in a real terminal (tmux, Debian's package): the live view is on the screen
while trials run, and gone when the command ends, leaving the finished trials' lines."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import IN_CI, write_spec

# Long enough to read the screen mid-trial: 10 epochs of 20,000 images, about a second each.
SPEC = """
family = "simple_mlp"
epochs = 10
n_trials = 4
seed = 0
train_size = 20000
validation_size = 1000

[params]
hidden = { low = 32, high = 128, log = true }
batch_size = [64, 128]
"""
ROW = re.compile(r"^w[01] trial \d .* [━─]{20} +\d+/10 val (-|[\d.]+%) +(-|[\d.]+ s/epoch)$")
STUDY = re.compile(r"^small: [0-4]/4 of the budget used; ")
TIMES = re.compile(r"^best val .*; elapsed [\d:]+( s)?; ETA (-|[\d:]+( s)?)")


@pytest.fixture
def tmux(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A tmux server of this test's own (-L), killed afterwards."""
    if shutil.which("tmux") is None:
        msg = "tmux not found: `apt-get install tmux` (.ci/run installs it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    sock = f"mnist-hpo-test-{uuid.uuid4().hex[:8]}"

    def run(*args: str) -> str:
        r = subprocess.run(["tmux", "-L", sock, *args], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    yield run
    subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)


@pytest.mark.slow
def test_work_shows_the_view_in_a_terminal_while_trials_run(
    tmux, tmp_path: Path, mnist_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    write_spec(tmp_path, "small", SPEC)
    env = {
        "MNIST_HPO_STORAGE": f"sqlite:///{tmp_path / 's.db'}",
        "MNIST_HPO_DATA": str(mnist_dir),
        "MNIST_HPO_STUDIES": str(tmp_path),
        "MNIST_HPO_ARTIFACTS": str(tmp_path / "art"),
    }
    mnist_hpo = f"{shlex.quote(sys.executable)} -m mnist_hpo"
    script = tmp_path / "run.sh"
    script.write_text(
        "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        + f"cd {shlex.quote(os.getcwd())}\n"
        + f"{mnist_hpo} create-study small >/dev/null && {mnist_hpo} work small --jobs 2\n"
        + "echo EXIT $?\nsleep 600\n"
    )
    tmux("new-session", "-d", "-s", "t", "-x", "120", "-y", "50", f"bash {script}")

    def screen() -> list[str]:
        return [line.rstrip() for line in tmux("capture-pane", "-p", "-t", "t").splitlines()]

    seen: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        lines = screen()
        if any(ROW.match(x) for x in lines) and any(TIMES.match(x) for x in lines):
            seen = lines
            break
        assert not any(x.startswith("EXIT") for x in lines), "\n".join(lines)
        time.sleep(0.2)
    assert seen, "no frame with a trial's row and the study line:\n" + "\n".join(screen())
    rows = [x for x in seen if ROW.match(x)]
    assert 1 <= len(rows) <= 2, "\n".join(seen)  # one per running trial, at most two workers
    at = [i for i, x in enumerate(seen) if STUDY.match(x)]
    assert at and TIMES.match(seen[at[0] + 1]), "\n".join(seen)  # the study line, under the rows
    assert seen.index(rows[-1]) < at[0]

    while time.monotonic() < deadline and not any(x.startswith("EXIT") for x in screen()):
        time.sleep(0.5)
    final = screen()
    assert "EXIT 0" in final, "\n".join(final)
    assert not any(ROW.match(x) for x in final), "\n".join(final)  # the view went away
    assert any(re.match(r"\[w[01]\] trial \d complete: val", x) for x in final)
    assert "trials: 4/4 of the budget used; complete 4" in final
    assert not any("Traceback" in x for x in final)
