"""Soak / fault test: N worker processes x M trials on SQLite and PostgreSQL, with random kills.

Each backend runs one study twice with the same spec: once undisturbed (the baseline), once
while a supervisor hits a random worker every few seconds:
- KILL (default): SIGKILL, then a replacement starts (as a restart policy would);
- TERM: a stop as `docker stop` sends it (finish the epoch, re-queue), then a replacement;
- STOP: a pause past the grace period (SIGSTOP, then SIGCONT after grace + 2 s), as a VM
  pause, a closed laptop lid or a scheduler's suspend does: another worker takes the paused
  one's trial over, and the paused worker, once it wakes, must let it go and carry on.
With --corrupt (SIGKILL only), each kill also damages the killed trial's checkpoint files before
its retry can start (a torn write, a bad disk, a partial sync of a shared folder), in turn:
random bytes over the newest, the newest cut to half, another trial's (or an older epoch's)
file copied over the newest, every file of the chain overwritten. The retry must skip them
and resume from the newest one that reads, or from scratch. Then it counts what a user would
care about:

- trials/s of both runs and their ratio, and the best validation accuracy of each;
- retries: trials failed by the heartbeat and re-queued, and how many resumed from a
  checkpoint (epochs not trained again);
- lost: trials left RUNNING or WAITING, FAIL trials without a finished retry, budget not met,
  checkpoint files left behind. It must be 0 for every item; the script exits 1 otherwise.
  A retry chain the soak itself killed MAX_RETRY + 1 times is given up by design (a trial
  that kills 4 workers in a row is not run a 5th time); it is counted and shown apart.

The objective is the real one on a tiny slice of real MNIST (perceptron, 2,000 training images,
4 epochs), so each trial takes a second or two and the faults hit every phase of a trial.
Heartbeat 1 s, grace 5 s (MNIST_HPO_HEARTBEAT / MNIST_HPO_GRACE), as in the tests.

    MNIST_HPO_DATA=/path/to/mnist .venv/bin/python benchmarks/soak.py \\
        [--workers 4] [--trials 24] [--kills 5] [--signal KILL|TERM|STOP]
        [--backends sqlite,postgres] [--seed 0] [--corrupt]

40 workers on one PostgreSQL, 20 per core, no faults at all (heartbeats run late under the
overload; a worker judged dead while only slow must let its trial go and go on):

    ... benchmarks/soak.py --workers 40 --trials 120 --kills 0 --backends postgres --no-baseline
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from mnist_hpo.resilience import storage as storage_mod
from mnist_hpo.resilience.retries import MAX_RETRY, chain
from mnist_hpo.search import study as study_mod
from mnist_hpo.search.spec_files import load_spec

SPEC = """
family = "perceptron"
epochs = 4
n_trials = {trials}
seed = 0
train_size = 2000
validation_size = 500

[params]
batch_size = [32, 64]
"""
GRACE = 5  # seconds (heartbeat 1 s), as in the tests
# How long a due fault waits for a worker in the middle of a trial before it hits any worker: on
# a busy machine workers spend seconds importing PyTorch, and hitting one then tests nothing.
BUSY_WAIT = 30.0
PG_ADMIN = os.environ.get("MNIST_HPO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@dataclass
class Outcome:
    seconds: float
    complete: int
    pruned: int
    retries: int  # trials created by a retry
    resumed: int  # retries that resumed from a checkpoint
    epochs_saved: int  # epochs restored from checkpoints instead of trained again
    kills: int
    best_val: float
    lost: dict[str, int]  # what went missing, by kind (all must be 0)
    overshoot: int  # finished trials beyond the budget
    taken_over: int = 0  # "was taken over by another worker" lines: a live worker judged dead
    leftovers: tuple[str, ...] = ()  # checkpoint files left, by name
    bad_codes: tuple[int, ...] = ()  # unexpected worker exit codes
    unretried: tuple[str, ...] = ()  # each FAIL trial without a finished retry, and its retries
    given_up: int = 0  # trials of chains whose worker the soak killed MAX_RETRY + 1 times
    corrupted: int = 0  # checkpoint files damaged after a kill (--corrupt)
    skipped: int = 0  # damaged files the retries skipped ("...; skipped" lines)
    from_scratch: int = 0  # retries that found no checkpoint that reads


def run_study(url: str, folder: Path, args: argparse.Namespace, kills: int) -> Outcome:
    name = f"soak_{uuid.uuid4().hex[:6]}"
    spec_file = folder / f"{name}.toml"
    spec_file.write_text(SPEC.format(trials=args.trials), encoding="utf-8")
    study, _ = study_mod.create(storage_mod.open_storage(url), load_spec(str(spec_file)))
    artifacts = folder / f"artifacts-{name}"
    env = {
        **os.environ,
        "MNIST_HPO_STORAGE": url,
        "MNIST_HPO_ARTIFACTS": str(artifacts),
        "MNIST_HPO_HEARTBEAT": "1",
        "MNIST_HPO_GRACE": str(GRACE),
    }
    logs = (args.logs or folder) / f"logs-{name}"
    logs.mkdir(parents=True)
    cmd = [sys.executable, "-m", "mnist_hpo", "work", name, "--threads", "1", "--no-download"]
    started = time.monotonic()
    count = 0

    def spawn() -> subprocess.Popen[bytes]:
        nonlocal count
        count += 1
        log = (logs / f"worker{count}.log").open("wb")
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    rng = random.Random(args.seed)
    procs = [spawn() for _ in range(args.workers)]
    done_kills = corrupted = 0
    killed: set[int] = set()  # pids of the workers this run killed
    next_kill = time.monotonic() + rng.uniform(8, 12)  # workers take ~5 s to start
    while any(p.poll() is None for p in procs):
        time.sleep(0.2)
        if done_kills < kills and time.monotonic() >= next_kill:
            alive = [p for p in procs if p.poll() is None]
            if not alive:  # the study finished between the two checks
                break
            # Prefer a worker in the middle of a trial (its pid is in the trial's "worker"
            # attr): killing one that is still importing torch tests nothing.
            # With --corrupt, one with a finished epoch: a checkpoint to damage.
            running = {
                str(t.user_attrs.get("worker", "")).rsplit(":", 1)[-1]
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.intermediate_values or not args.corrupt
            }
            busy = [p for p in alive if str(p.pid) in running]
            if not busy and time.monotonic() < next_kill + BUSY_WAIT:
                continue  # every worker is starting up or between trials: look again shortly
            victim = rng.choice(busy or alive)
            victim.send_signal(args.sig)
            killed.add(victim.pid)
            if args.sig == signal.SIGSTOP:
                time.sleep(GRACE + 2)  # past the grace: another worker takes its trial over
                victim.send_signal(signal.SIGCONT)
            else:
                victim.wait()
                if args.corrupt:  # before the grace runs out: the retry finds them damaged
                    corrupted += corrupt(study, artifacts, victim.pid, rng, done_kills)
                procs.append(spawn())  # the restart policy
            done_kills += 1
            next_kill = time.monotonic() + rng.uniform(2, 6)
    seconds = time.monotonic() - started
    # SIGKILL: -9; SIGTERM: the worker re-queues its trial and exits 143 (128 + 15), or -15
    # when it came before the worker had installed its handler (still importing PyTorch).
    # A paused worker is not stopped: it must finish normally.
    ok = {
        signal.SIGKILL: (0, -signal.SIGKILL),
        signal.SIGTERM: (0, 143, -signal.SIGTERM),
        signal.SIGSTOP: (0,),
    }[args.sig]
    bad_codes = sorted(p.returncode for p in procs if p.returncode not in ok)
    bad_exits = len(bad_codes)
    errors = taken_over = skipped = from_scratch = 0
    for log in logs.iterdir():
        text = log.read_text(errors="replace")
        errors += text.count("Traceback") + text.count("database is locked")
        errors += text.count("error:")
        taken_over += text.count("was taken over by another worker")
        skipped += text.count("; skipped")
        from_scratch += text.count("starts from scratch")

    trials = study_mod.load(storage_mod.open_storage(url), name)[0].get_trials()
    finished = {TrialState.COMPLETE, TrialState.PRUNED}
    retried_ok = {
        n for t in trials if t.state in finished for n in t.system_attrs.get("retry_history", [])
    }
    retries = [t for t in trials if t.system_attrs.get("retry_history")]
    done = [t for t in trials if t.state in finished]
    failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried_ok]
    # By design, not lost: a chain whose worker died MAX_RETRY + 1 times is given up (a trial
    # that kills 4 workers in a row would kill the next one), and a SIGKILL soak can do that to
    # an innocent trial. Counted apart when every death in the chain was one of our kills.
    by_design = killed_out(trials, killed) if args.sig == signal.SIGKILL else set()
    leftovers = [p.name for p in artifacts.iterdir()] if artifacts.is_dir() else []
    lost = {
        "left RUNNING/WAITING": sum(
            t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials
        ),
        "FAIL without a finished retry": sum(t.number not in by_design for t in failed),
        "budget shortfall": max(0, args.trials - len(done)),
        "checkpoint files left": len(leftovers),
        "worker errors in logs": errors,
        "bad exit codes": bad_exits,
    }
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    unretried = tuple(describe_unretried(t, trials, by_design) for t in failed)
    return Outcome(
        seconds=seconds,
        complete=sum(t.state == TrialState.COMPLETE for t in trials),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        retries=len(retries),
        resumed=sum(t.user_attrs.get("resumed_from_epoch", 0) > 0 for t in retries),
        epochs_saved=sum(int(t.user_attrs.get("resumed_from_epoch", 0)) for t in retries),
        kills=done_kills,
        best_val=max(values, default=0.0),
        lost=lost,
        overshoot=max(0, len(done) - args.trials),
        taken_over=taken_over,
        leftovers=tuple(sorted(leftovers)),
        bad_codes=tuple(bad_codes),
        unretried=unretried,
        given_up=len(by_design),
        corrupted=corrupted,
        skipped=skipped,
        from_scratch=from_scratch,
    )


CORRUPTIONS = ("random bytes", "cut to half", "another file", "every file")


def corrupt(study: optuna.Study, artifacts: Path, pid: int, rng: random.Random, n: int) -> int:
    """Damage the checkpoint files of the trial worker `pid` was running when it was killed,
    the n-th way of CORRUPTIONS; how many files were damaged (0: it had written none)."""
    ran = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if str(t.user_attrs.get("worker", "")).rsplit(":", 1)[-1] == str(pid)
    ]
    keys = [str(t.user_attrs["checkpoint"]["key"]) for t in ran if "checkpoint" in t.user_attrs]
    files = (
        sorted(
            (p for p in artifacts.glob(f"{keys[0]}-*") if not p.name.endswith(".partial")),
            key=lambda p: int(p.name.rsplit("-e", 1)[1]),
        )
        if keys
        else []
    )
    if not files:
        return 0
    how, newest = CORRUPTIONS[n % len(CORRUPTIONS)], files[-1]
    if how == "every file":
        for f in files:
            f.write_bytes(rng.randbytes(f.stat().st_size))
        return len(files)
    # Another trial's checkpoint if there is one, else an older epoch of this chain.
    others = [p for p in artifacts.iterdir() if not p.name.startswith(keys[0])] or files[:-1]
    others = [p for p in others if not p.name.endswith(".partial")]
    if how == "another file" and others:
        newest.write_bytes(rng.choice(others).read_bytes())
    elif how == "cut to half":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    else:  # random bytes, or another file where there is none
        newest.write_bytes(rng.randbytes(newest.stat().st_size))
    return 1


def killed_out(trials: list[FrozenTrial], killed: set[int]) -> set[int]:
    """Numbers of the FAIL trials in chains given up after MAX_RETRY + 1 deaths, each one a
    worker this soak killed (its pid in the trial's "worker" attr)."""
    by_number = {t.number: t for t in trials}
    out: set[int] = set()
    for last in trials:
        numbers = chain(last)
        if len(numbers) != MAX_RETRY + 1 or last.state != TrialState.FAIL:
            continue
        members = [by_number[n] for n in numbers if n in by_number]
        pids = [str(t.user_attrs.get("worker", "")).rsplit(":", 1)[-1] for t in members]
        if (
            len(members) == len(numbers)
            and all(t.state == TrialState.FAIL and "error" not in t.user_attrs for t in members)
            and all(pid.isdigit() and int(pid) in killed for pid in pids)
        ):
            out.update(numbers)
    return out


def describe_unretried(failed: FrozenTrial, trials: list[FrozenTrial], by_design: set[int]) -> str:
    """One line on a FAIL trial nothing finished for: when, how far, its worker, and its
    retries' fate."""
    retries = [
        f"#{t.number} {t.state.name}"
        for t in trials
        if failed.number in t.system_attrs.get("retry_history", [])
    ]
    return (
        f"trial {failed.number}: started {failed.datetime_start}, failed "
        f"{failed.datetime_complete}, {len(failed.intermediate_values)} epochs, "
        f"worker {failed.user_attrs.get('worker', '?')}, error "
        f"{failed.user_attrs.get('error', 'none')!r}, retries {retries or 'none'}"
        + (
            f" (given up after {MAX_RETRY + 1} kills, by design)"
            if failed.number in by_design
            else ""
        )
    )


def pg_database() -> tuple[str, str]:
    import psycopg

    name = f"mnist_hpo_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}", name


def drop_pg(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def report(backend: str, label: str, o: Outcome, trials: int) -> None:
    finished = o.complete + o.pruned
    print(
        f"{backend:<8} {label:<9} {o.seconds:6.1f} s  {finished / o.seconds:5.2f} trials/s  "
        f"{o.complete} complete, {o.pruned} pruned (budget {trials}, +{o.overshoot})  "
        f"best val {100 * o.best_val:.2f}%  kills {o.kills}  retries {o.retries} "
        f"(resumed {o.resumed}, {o.epochs_saved} epochs not retrained)  "
        f"lost {sum(o.lost.values())}"
        + (
            f"  (given up after {MAX_RETRY + 1} kills, by design: {o.given_up})"
            if o.given_up
            else ""
        )
        + (f"  (live workers judged dead: {o.taken_over})" if o.taken_over else "")
        + (
            f"  corrupted {o.corrupted} checkpoint file(s): {o.skipped} skipped by retries, "
            f"{o.from_scratch} retries from scratch"
            if o.corrupted
            else ""
        )
    )
    for kind, n in o.lost.items():
        if n:
            print(f"    LOST: {kind}: {n}")
    if o.leftovers:
        print(f"    files left: {', '.join(o.leftovers)}")
    if o.bad_codes:
        print(f"    exit codes: {', '.join(map(str, o.bad_codes))}")
    for line in o.unretried:
        print(f"    {line}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--signal", choices=("KILL", "TERM", "STOP"), default="KILL")
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baseline", action="store_true", help="Skip the undisturbed runs.")
    p.add_argument("--logs", type=Path, help="Keep every worker's log in this folder.")
    p.add_argument(
        "--corrupt",
        action="store_true",
        help="After each SIGKILL, damage the killed trial's checkpoints before its retry.",
    )
    args = p.parse_args()
    if args.corrupt and args.signal != "KILL":
        p.error("--corrupt damages a killed trial's checkpoints: use it with --signal KILL")
    args.sig = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "STOP": signal.SIGSTOP}[args.signal]
    faulty = f"SIG{args.signal}s" if args.kills else "no faults"
    if args.corrupt and args.kills:
        faulty += "+corrupt"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lost_total = 0
    print(
        f"{args.workers} workers x {args.trials} trials (perceptron, 2,000 images, 4 epochs), "
        f"{args.kills} random {faulty} per faulty run; heartbeat 1 s, grace 5 s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for backend in args.backends.split(","):
            rates = {}
            for label, kills in (("baseline", 0), (faulty, args.kills)):
                if label == "baseline" and args.no_baseline:
                    continue
                if backend == "sqlite":
                    url, db = f"sqlite:///{folder / f'{label}.db'}", ""
                else:
                    url, db = pg_database()
                try:
                    o = run_study(url, folder, args, kills)
                finally:
                    if db:
                        drop_pg(db)
                report(backend, label, o, args.trials)
                rates[label] = (o.complete + o.pruned) / o.seconds
                lost_total += sum(o.lost.values())
            if len(rates) == 2:
                print(
                    f"{backend:<8} throughput with faults / without: "
                    f"{rates[faulty] / rates['baseline']:.2f}"
                )
    print(f"lost in all runs: {lost_total}")
    return 1 if lost_total else 0


if __name__ == "__main__":
    sys.exit(main())
