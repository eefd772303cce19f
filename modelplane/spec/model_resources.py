"""What one replica of a model costs: how many copies of it run, and the memory they commit.

The scheduler places models by these numbers and an agent admits them by the same ones, so both read them
here. A spec may leave the instance count unsaid: ``requested_instances`` is then 0, which tells the inference
server to keep the model's own configuration (MLServer's default workers, a Triton ``instance_group``), while
``instance_count`` is still at least 1, because at least one copy runs and needs memory.
"""

from __future__ import annotations

from generated.mlops.scheduler import scheduler_pb2 as pb


def requested_instances(model: pb.Model) -> int:
    """The copies ``modelRuntimeInfo`` asks one replica to run; 0 when it names none (the server decides)."""
    info = model.modelSpec.modelRuntimeInfo
    kind = info.WhichOneof("modelRuntimeInfo")
    if kind == "mlserver":
        return info.mlserver.parallelWorkers
    if kind == "triton":
        return sum(cpu.instanceCount for cpu in info.triton.cpu)
    return 0


def instance_count(model: pb.Model) -> int:
    """How many copies of the model one replica runs (each needs the model's memory): at least one."""
    return max(1, requested_instances(model))


def memory_needed(model: pb.Model) -> int:
    """Bytes one replica commits to the model: memoryBytes x instance count (0 when unspecified)."""
    return model.modelSpec.memoryBytes * instance_count(model)
