"""Runs `eartalk ARGS...` in this process (and, through Lightning's launcher, in every DDP rank),
recording each rank's MAR training masks and, at train start, its step and optimiser state."""
import os
import sys
from pathlib import Path

import torch

REC = Path(os.environ["EARTALK_TEST_RECORD"])


def rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def main() -> int:
    from eartalk.core.cli import main as cli
    from eartalk.core.engine.mar import MARDecoder
    from eartalk.recipes.train import EarTalkModule

    original = MARDecoder.random_masks
    masks = []

    def recording(self, *args, **kwargs):
        mask = original(self, *args, **kwargs)
        masks.append(mask.detach().cpu().clone())
        torch.save(masks, REC / f"masks.rank{rank()}.pt")
        return mask

    def on_train_start(self):
        opt = self.trainer.optimizers[0]
        torch.save({"global_step": self.trainer.global_step, "optimizer": opt.state_dict(),
                    "world_size": self.trainer.world_size, "initial_seed": torch.initial_seed(),
                    "rng_state": torch.get_rng_state()}, REC / f"start.rank{rank()}.pt")

    MARDecoder.random_masks = recording
    EarTalkModule.on_train_start = on_train_start
    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
