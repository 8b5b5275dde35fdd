"""Peer (c) of bench_peers.py: a hand-written torch loop tracked with MLflow as a tutorial does it: params,
per-epoch train/validation metrics, the test metrics and an ``mlflow.pytorch`` model, in one run."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mlflow  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from _digits import lenet5, loaders, options  # noqa: E402


def evaluate(model: nn.Module, loader) -> tuple[float, float]:
    model.eval()
    loss = correct = total = 0.0
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            loss += nn.functional.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
    return loss / total, correct / total


def main() -> None:
    args = options(__doc__.splitlines()[0])
    torch.manual_seed(args.seed)
    data = loaders(args)
    model = lenet5()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_experiment(args.experiment)
    with mlflow.start_run():
        mlflow.log_params({"model": "lenet5", "dataset": "digits", "epochs": args.epochs, "lr": args.lr,
                           "batch_size": args.batch_size, "optimizer": "adam", "seed": args.seed})
        for epoch in range(args.epochs):
            model.train()
            total = seen = 0.0
            for x, y in data["train"]:
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(y)
                seen += len(y)
            val_loss, val_accuracy = evaluate(model, data["val"])
            mlflow.log_metrics({"train_loss": total / seen, "val_loss": val_loss, "val_accuracy": val_accuracy},
                               step=epoch)
        test_loss, test_accuracy = evaluate(model, data["test"])
        mlflow.log_metrics({"test_loss": test_loss, "test_accuracy": test_accuracy})
        example = next(iter(data["test"]))[0][:2].numpy()  # MLflow 3's default pt2 format needs one
        mlflow.pytorch.log_model(model, name="model", input_example=example)


if __name__ == "__main__":
    main()
