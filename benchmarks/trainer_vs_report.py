"""mnist-hpo's trainer against the course report's training loop, per family, on real MNIST.

The report's loop: TensorDataset + DataLoader(batch_size=5, shuffle=True), MSELoss(reduction=
"sum") on one-hot targets, the report's optimizer (SGD lr 0.01 for the MLPs, lr 1e-4 for the
perceptron since more diverges on standardised pixels; Adam lr 0.001 for the CNN), `loss.item()`
every step, and test evaluation one image at a time. mnist-hpo's trainer (`train.train`): batches
gathered from in-memory tensors in a per-epoch order, one host sync per epoch, fused Adam lr 0.001
with cross-entropy (Adam does more work per step than SGD, so the MLP ratios are if anything low),
at the batch sizes the search samples (16..512), and evaluation in large batches under
inference_mode, in float32 and (where the CPU has native bfloat16) under bf16 autocast; the row
`work --precision auto` would pick is starred. Both run the same model (the report's configuration
of each family; the CNN as the report coded it, ReLU before pool, against mnist-hpo's pool-first
channels_last one) on the same normalised tensors with the same torch thread count.

Speed is compared as training samples per second, so the report loop may run on the first
--report-limit images of an epoch (0 = the whole epoch) and still compare fairly. Accuracy is
printed beside speed: validation accuracy after the epoch (the report loop's figure is after
--report-limit images when one is set).

    MNIST_HPO_DATA=/path/to/mnist .venv/bin/python benchmarks/trainer_vs_report.py
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common import ReportCNN, family_models, machine, mnist
from mnist_hpo.ml.data import Data
from mnist_hpo.ml.device import bf16_native, pick_precision
from mnist_hpo.ml.train import TrainConfig, accuracy, prepare, train


def report_epoch(model: nn.Module, family: str, data: Data, limit: int) -> tuple[float, int]:
    """One epoch (or `limit` images of it) of the report's loop; returns (seconds, images)."""
    n = min(limit, len(data.train_x)) if limit else len(data.train_x)
    conv = family == "cnn"
    # The report's pickle held flat (N, 784) rows; its CNN reshaped each batch.
    x = data.train_x[:n] if conv else data.train_x[:n].flatten(1)
    y = torch.nn.functional.one_hot(data.train_y[:n], 10).float()
    loader = DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True)
    criterion = nn.MSELoss(reduction="sum")
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(model.parameters(), lr=0.001)
        if conv
        else torch.optim.SGD(model.parameters(), lr=1e-4 if family == "perceptron" else 0.01)
    )
    model.train()
    running = 0.0
    t0 = time.perf_counter()
    for xb, yb in loader:
        opt.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        running += loss.item()
    return time.perf_counter() - t0, n


@torch.no_grad()
def report_eval(model: nn.Module, family: str, data: Data, limit: int) -> tuple[float, float, int]:
    """The report's test loop, one image at a time; returns (seconds, accuracy, images)."""
    n = min(limit, len(data.test_x)) if limit else len(data.test_x)
    model.eval()
    correct = 0
    t0 = time.perf_counter()
    for i in range(n):
        xi = data.test_x[i : i + 1]
        out = model(xi if family == "cnn" else xi.flatten(1))
        correct += int(out.argmax(1).item() == data.test_y[i].item())
    return time.perf_counter() - t0, correct / n, n


def ours_epoch(
    model: nn.Module, data: Data, batch: int, limit: int, precision: str
) -> tuple[float, float, int]:
    """One epoch of train.train; returns (training seconds, validation accuracy, images)."""
    if limit:
        data = Data(data.train_x[:limit], data.train_y[:limit], *(getattr(data, k) for k in _EVAL))
    cfg = TrainConfig(1, batch, "adam", 0.001, 0.0, 0.0, "cross_entropy", "constant", seed=0)
    result = train(model, cfg, data, precision=precision)
    return result.epoch_seconds[0], result.val_accuracy, len(data.train_x)


_EVAL = ("val_x", "val_y", "test_x", "test_y")


def ours_eval(model: nn.Module, data: Data, repeats: int = 3) -> tuple[float, float]:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        acc = accuracy(model, data.test_x, data.test_y)
        best = min(best, time.perf_counter() - t0)
    return best, acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="perceptron,simple_mlp,deep_mlp,cnn")
    parser.add_argument("--batches", default="16,64,256,512", help="mnist-hpo batch sizes")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: a --jobs 2 worker)"
    )
    parser.add_argument("--report-limit", type=int, default=0, help="report loop images (0=all)")
    parser.add_argument("--ours-limit", type=int, default=0, help="trainer images (0 = all)")
    parser.add_argument("--eval-limit", type=int, default=0, help="report test images (0 = all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = mnist()
    batches = [int(b) for b in args.batches.split(",")]
    precisions = ["fp32", "bf16"] if bf16_native(data.device) else ["fp32"]
    print(f"machine: {machine()}; {len(data.train_x):,} training images per epoch")
    print("mnist-hpo rows: batch size, precision; * = what `work --precision auto` picks")
    print(
        f"{'family':<11} {'loop':<22} {'samples/s':>10} {'s/epoch':>8} {'val acc':>8} "
        f"{'speed-up':>9}"
    )
    evals = []
    for family in args.families.split(","):
        models = family_models()
        reference = ReportCNN() if family == "cnn" else models[family]
        torch.manual_seed(0)
        seconds, n = report_epoch(reference, family, data, args.report_limit)
        base = n / seconds
        val = accuracy(reference, data.val_x, data.val_y)
        scaled = len(data.train_x) / base
        print(
            f"{family:<11} {'report, batch 5':<22} {base:>10,.0f} {scaled:>8.2f} {val:>8.2%} "
            f"{'1.0x':>9}" + (f"  ({n:,} images)" if n < len(data.train_x) else "")
        )
        e_seconds, e_acc, e_n = report_eval(reference, family, data, args.eval_limit)
        report_eval_s = e_seconds * len(data.test_x) / e_n
        for batch, precision in [(b, p) for b in batches for p in precisions]:
            torch.manual_seed(0)
            model = prepare(family_models()[family], data.device)
            auto = pick_precision("auto", model, batch, data.device)
            seconds, val, n = ours_epoch(model, data, batch, args.ours_limit, precision)
            rate = n / seconds
            label = f"mnist-hpo, {batch}, {precision}" + ("*" if precision == auto else "")
            print(
                f"{family:<11} {label:<22} {rate:>10,.0f} "
                f"{len(data.train_x) / rate:>8.2f} {val:>8.2%} {rate / base:>8.1f}x"
                + (f"  ({n:,} images)" if n < len(data.train_x) else "")
            )
        ours_s, ours_acc = ours_eval(model, data)
        evals.append((family, report_eval_s, e_acc, e_n, ours_s, ours_acc))
    print("\ntest evaluation, 10,000 images")
    print(f"{'family':<11} {'report s':>9} {'(acc)':>7} {'ours s':>8} {'(acc)':>7} {'speed-up':>9}")
    for family, rs, racc, rn, os_, oacc in evals:
        note = f"  (report timed on {rn:,} images, scaled)" if rn < 10_000 else ""
        print(
            f"{family:<11} {rs:>9.2f} {racc:>7.2%} {os_:>8.3f} {oacc:>7.2%} {rs / os_:>8.0f}x"
            + note
        )


if __name__ == "__main__":
    main()
