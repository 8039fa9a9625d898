"""The faults the drill injects from inside a training process: the drill's training child.

    python -m diffusion.drill.inject SPEC_JSON CONFIG [train_scripts/train.py arguments]
    python -m torch.distributed.run --nproc_per_node 2 ... -m diffusion.drill.inject SPEC_JSON CONFIG ...

``SPEC_JSON`` keys: ``kill_at_step`` (send ``signal``, default SIGKILL, as that optimizer step starts; with ``rank``
on that rank only; on the first torchrun attempt only), ``kill_in_save`` (SIGKILL after the first file of that step's
checkpoint is written), ``nan_steps`` (step attempts of this process, from 1, made NaN), ``sleep`` (seconds per step,
so that an outside signal or limit lands mid-run) and ``ignore_sigxfsz`` (a file-size limit then fails the write with
EFBIG instead of killing the process). A module run with ``-m``, so it starts the same from any folder and under
torchrun.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path


def run_child(spec: dict, argv: list[str]) -> None:
    """Install the faults of ``spec`` into the trainer, then train as ``train_scripts/train.py argv`` would."""
    from diffusion.engine import checkpoint as ckpt
    from diffusion.engine.launch import train
    from diffusion.engine.trainer import Trainer

    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    on_this_rank = spec.get("rank") is None or int(os.environ.get("RANK", 0)) == spec["rank"]
    if spec.get("ignore_sigxfsz"):
        # a file-size limit then fails the write with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    train_step, init, save_tensors = Trainer.train_step, Trainer.__init__, ckpt.save_tensors

    def step_with_faults(self, batches):
        self.drill_attempts = getattr(self, "drill_attempts", 0) + 1  # optimizer-step attempts, skipped ones included
        if spec.get("kill_at_step") == self.step + 1 and on_this_rank and first_attempt:
            os.kill(os.getpid(), signal.Signals[spec.get("signal", "SIGKILL")])
        time.sleep(spec.get("sleep", 0.0))
        return train_step(self, batches)

    def init_with_nans(self, *args, **kwargs):
        init(self, *args, **kwargs)
        forward = self.method.forward

        def nan_forward(model, batch):
            loss, logs = forward(model, batch)
            # a skipped step does not advance self.step, so NaNs are keyed on the attempt, not on the step number
            nan = getattr(self, "drill_attempts", 0) in spec.get("nan_steps", ())
            return (loss * float("nan") if nan else loss), logs

        self.method.forward = nan_forward

    def save_then_die(path, tensors):
        save_tensors(path, tensors)
        saving = ckpt.TMP_DIR.match(Path(path).parent.name)  # the .tmp folder of a checkpoint being written
        if saving and int(saving.group(1)) == spec.get("kill_in_save"):
            os.kill(os.getpid(), signal.SIGKILL)  # one file of the checkpoint written, the rest not

    Trainer.train_step, Trainer.__init__, ckpt.save_tensors = step_with_faults, init_with_nans, save_then_die
    train(argv)


if __name__ == "__main__":
    run_child(json.loads(sys.argv[1]), sys.argv[2:])
