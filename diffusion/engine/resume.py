"""What a resumed run takes from its checkpoint and what from its config, said out loud.

PixArt-δ §3.3 runs are resumed many times, sometimes with an edited config (a lower lr, more steps) or on another
number of GPUs. The checkpoint restores the training *state* (weights, EMA, method state, optimizer moments, grad
scaler, lr-schedule position, data position, RNG); the config gives the *settings* (lr, schedule shape, max_steps,
batch size, grad_accum, EMA rate, clipping, ...). ``torch.optim`` and ``LambdaLR`` would otherwise bring back the
checkpoint's lr and silently ignore an edited ``optimizer.lr``, and a changed world size would change the global
batch without a word. Every difference between the checkpoint's settings and the config's is a warning.
"""

import torch

# the settings recorded in every checkpoint (training_state.pt["run"]) and compared on resume
RUN_KEYS = ("lr", "batch_size", "grad_accum", "world_size", "global_batch", "seed", "ema_rate", "max_steps")
FROM_CHECKPOINT = (
    "weights, EMA, method state, optimizer moments, grad scaler, lr-schedule position, data position, RNG streams"
)
FROM_CONFIG = "lr, lr schedule, max_steps, batch size, grad_accum, EMA rate, grad clip, mixed precision, validation"


def run_record(train_cfg: dict, world_size: int, lr: float) -> dict:
    """The settings of this run to store in a checkpoint (Python scalars only: loadable with ``weights_only``)."""
    return {
        "lr": float(lr),
        "batch_size": int(train_cfg["batch_size"]),
        "grad_accum": int(train_cfg["grad_accum"]),
        "world_size": int(world_size),
        "global_batch": int(train_cfg["batch_size"] * train_cfg["grad_accum"] * world_size),
        "seed": int(train_cfg["seed"]),
        "ema_rate": train_cfg["ema_rate"],
        "max_steps": int(train_cfg["max_steps"]),
    }


def saved_record(state: dict) -> dict:
    """The run record of a checkpoint's ``training_state``; checkpoints older than the record give what they have
    (world size, and the lr of the optimizer's first param group)."""
    if "run" in state:
        return dict(state["run"])
    record = {"world_size": state.get("world_size")}
    groups = state.get("optimizer", {}).get("param_groups") or [{}]
    if "initial_lr" in groups[0]:
        record["lr"] = groups[0]["initial_lr"]
    return {k: v for k, v in record.items() if v is not None}


def changes(saved: dict, current: dict) -> list[str]:
    """One warning per setting that differs between the checkpoint (``saved``) and the config (``current``)."""
    notes = [
        f"{key} changed since the checkpoint: {saved[key]} -> {current[key]} (the config's is used)"
        for key in RUN_KEYS
        if key != "global_batch" and key in saved and saved[key] != current[key]
    ]
    old_global = saved.get("global_batch")
    if old_global is None and saved.get("world_size", current["world_size"]) != current["world_size"]:
        old_global = (
            saved["world_size"] * current["batch_size"] * current["grad_accum"]
        )  # old checkpoint: same per rank
    if old_global is not None and old_global != current["global_batch"]:
        per_step = current["batch_size"] * current["world_size"]
        hint = f"; train.grad_accum={old_global // per_step} keeps it" if old_global % per_step == 0 else ""
        notes.append(f"global batch {old_global} -> {current['global_batch']} images per optimizer step{hint}")
    if "seed" in saved and saved["seed"] != current["seed"]:
        notes.append("with another seed the data order and noise after the resume differ from the original run")
    return notes


def rescale_data_position(data_state: dict, saved: dict, current: dict) -> dict:
    """The data position in batches of the current run: the same number of items into the epoch when the per-step
    batch over all ranks (batch_size x world_size) changed.
    Approximate: items of other ranks may repeat or be skipped."""
    old = saved.get("batch_size", current["batch_size"]) * saved.get("world_size", current["world_size"])
    new = current["batch_size"] * current["world_size"]
    if old == new:
        return dict(data_state)
    return {**data_state, "batch_in_epoch": data_state["batch_in_epoch"] * old // new}


def apply_lr(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float) -> None:
    """Make the config's base ``lr`` the one in use after ``load_state_dict`` restored the checkpoint's: the schedule
    keeps its position (``last_epoch``) and shape, applied to the new base lr."""
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    current = [base * fn(scheduler.last_epoch) for fn, base in zip(scheduler.lr_lambdas, scheduler.base_lrs)]
    for group, value in zip(optimizer.param_groups, current):
        group["initial_lr"], group["lr"] = lr, value
    scheduler._last_lr = current
