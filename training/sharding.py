"""FSDP for jobs that train all weights (`--full`, `--fsdp` under `accelerate launch` or
torchrun): torch's own fully_shard (FSDP2) with each decoder layer one unit and the rest
(embeddings, final norm, LM head) the root, so a process holds 1/N of the weights, gradients
and optimizer state between uses. The same code runs on CUDA (NCCL) and on the CPU (gloo),
which is how CI tests it; Accelerate starts the processes and places the devices, but its own
FSDP wrapping is for CUDA only and would not reach the CPU test.

Checkpoints and the written output hold full (gathered) tensors, so a sharded run resumes and
its artifact loads on any number of processes."""
from typing import Optional

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def is_sharded(model) -> bool:
    return isinstance(model, FSDPModule)


def shard(model, device: torch.device, bf16: bool):
    """Shard `model` in place over all processes. Gradients are summed, not averaged, across
    processes: the loop weights each process's loss by its share of the global batch."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    layer_classes = tuple(type(m) for m in model.modules() if type(m).__name__ in set(model._no_split_modules or ()))
    for module in list(model.modules()):
        if layer_classes and isinstance(module, layer_classes):
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # a plain sum, which gloo also has
    return model


def full_state(model) -> dict:
    """The whole state dict, gathered to the CPU of the main process (empty elsewhere); every
    process must call it."""
    return get_model_state_dict(model, options=FULL)


def load_full_state(model, state: dict) -> None:
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def checkpoint_fns(model, state_fn, load_state_fn) -> tuple:
    """(state_fn, load_state_fn) for the loop's checkpoints: the job's own for a plain model,
    the gathered full state for a sharded one."""
    if not is_sharded(model):
        return state_fn, load_state_fn
    return (lambda: full_state(model)), (lambda state: load_full_state(model, state))


class FullOptimizerState:
    """A sharded optimizer as a checkpointable object whose state is gathered like the model's."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict:
        return get_optimizer_state_dict(self.model, self.optimizer, options=FULL)

    def load_state_dict(self, state: dict) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state, options=StateDictOptions(full_state_dict=True))


def gathered(model) -> Optional[dict]:
    """For writing the output: the full state of a sharded model, None for a plain one. Tied
    weights (the LM head of SmolLM2) are written once, as save_pretrained does."""
    if not is_sharded(model):
        return None
    state = full_state(model)
    for key in getattr(model, "all_tied_weights_keys", None) or {}:
        state.pop(key, None)
    return state
