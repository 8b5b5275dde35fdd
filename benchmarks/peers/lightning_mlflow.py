"""Peer (d) of bench_peers.py: the same model, data and epochs as a LightningModule, tracked by
``lightning.pytorch.loggers.MLFlowLogger`` with Lightning's defaults (its ModelCheckpoint; ``log_model=True``
uploads the checkpoint as the run's model artifact), then ``trainer.test``. Needs the ``bench`` extra."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning.pytorch as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.loggers import MLFlowLogger  # noqa: E402
from torch import nn  # noqa: E402

from _digits import lenet5, loaders, options  # noqa: E402


class Classifier(L.LightningModule):
    def __init__(self, lr: float, **hparams) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = lenet5()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, _):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def _score(self, batch, split: str) -> None:
        x, y = batch
        out = self(x)
        self.log(f"{split}_loss", nn.functional.cross_entropy(out, y))
        self.log(f"{split}_accuracy", (out.argmax(1) == y).float().mean())

    def validation_step(self, batch, _):
        self._score(batch, "val")

    def test_step(self, batch, _):
        self._score(batch, "test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main() -> None:
    args = options(__doc__.splitlines()[0])
    warnings.filterwarnings("ignore")  # the num_workers hint and the like: noise, not work
    L.seed_everything(args.seed, verbose=False)
    data = loaders(args)
    logger = MLFlowLogger(experiment_name=args.experiment, tracking_uri=args.tracking_uri, log_model=True)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=logger,
                        enable_progress_bar=False, default_root_dir=str(Path.cwd()))
    module = Classifier(lr=args.lr, model="lenet5", dataset="digits", epochs=args.epochs,
                        batch_size=args.batch_size, optimizer="adam", seed=args.seed)
    trainer.fit(module, data["train"], data["val"])
    trainer.test(module, data["test"], verbose=False)


if __name__ == "__main__":
    main()
