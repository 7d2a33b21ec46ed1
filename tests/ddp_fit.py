"""Run by test_ddp.py as its own process: 2-rank CPU DDP fit with BNInit; each rank saves its parameters."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import Classifier, dataset, loader, tiny_net, trainer  # noqa: E402

from lightning_bninit import BNInit  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.manual_seed(0)
    net = tiny_net()
    with torch.no_grad():
        net[9].weight.fill_(0.5)  # looks pretrained: exactly one warning is expected, from rank zero
    model = Classifier(net, partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-2))
    t = trainer(strategy="ddp", devices=2, callbacks=[BNInit(input_norm=True)], max_epochs=2,
                limit_train_batches=3, deterministic=False)
    t.fit(model, loader(dataset(dtype=torch.float32), 4))
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"rank{t.global_rank}.pt")
