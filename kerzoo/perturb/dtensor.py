"""Parameters that are DTensors, as torch's FSDP2 (``torch.distributed.fsdp.fully_shard``) makes
them: each rank holds a block of rows of each tensor and the optimizer moves only that block.

FSDP2 shards every parameter along dim 0 (``Shard(0)``) over a 1-D mesh of W ranks: with
c = ceil(rows / W), rank r holds rows [r c, min((r + 1) c, rows)) (the last shard may be short, a
rank may hold none). Its local tensor (``p.to_local()``) is a view of the buffer FSDP all-gathers
before each forward, so writing it in place is what the next forward sees. The optimizer gives the
perturber that local tensor with ``ParamInfo.offset`` = the global flat index of its first element
and ``ParamInfo.shape`` = the whole shape: the engine then draws exactly the slice of the whole
tensor's direction, and the gathered weights follow an unsharded run.

The loss at each point is averaged over the mesh's ranks (one all-reduce of a float64 per
forward), so every rank computes the same coefficients and applies the same update to its rows,
whether the ranks evaluated the same batch or each its own part of it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

FIX = (
    "shard the model with fully_shard's defaults (Shard(0) on a 1-D mesh), or leave the tensor "
    "unsharded"
)


def is_dtensor(p: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without torch.distributed
        return False
    return isinstance(p, DTensor)


def local_shard(p: Any, name: str) -> tuple[torch.Tensor, int, tuple[int, ...]]:
    """(the local shard, its global flat element offset, the whole shape) of a DTensor laid out as
    FSDP2 lays it out; anything else is refused, naming the parameter."""
    from torch.distributed.tensor import Shard

    mesh, placements = p.device_mesh, tuple(p.placements)
    if mesh.ndim != 1 or len(placements) != 1 or placements[0] != Shard(0):
        raise ValueError(
            f"parameter {name} is a DTensor placed as {placements} on a {mesh.ndim}-D mesh; kerzoo "
            f"perturbs DTensors sharded along dim 0 on a 1-D mesh (Shard(0), FSDP2's default): "
            f"{FIX}"
        )
    whole = tuple(p.shape)
    with torch.no_grad():  # the local tensor itself, not an autograd view of it
        local = p.to_local()
    if not local.is_contiguous():
        raise ValueError(f"parameter {name}: its local shard is not contiguous; {FIX}")
    rows = whole[0] if whole else 1
    world, rank = mesh.size(), mesh.get_local_rank()
    chunk = math.ceil(rows / world)
    start = min(rank * chunk, rows)
    expect = (max(min(chunk, rows - start), 0), *whole[1:])
    if tuple(local.shape) != expect:
        raise ValueError(
            f"parameter {name}: rank {rank} of {world} holds a shard of shape "
            f"{tuple(local.shape)} of {whole}, not rows [{start}, {start + expect[0]}) as "
            f"Shard(0) places them (shape {expect}); {FIX}"
        )
    if local.numel() and local.data_ptr() != p.to_local().data_ptr():
        raise ValueError(
            f"parameter {name}: its to_local() is a copy, not a view of the shard the forward "
            f"reads, so an update would be lost; {FIX}"
        )
    return local, start * math.prod(whole[1:]), whole


def group_of(dtensors: dict[str, Any]) -> Any:
    """The process group of the mesh every DTensor parameter lives on (one mesh for all)."""
    meshes: dict[Any, str] = {}  # equal meshes (fully_shard makes one per call) are one
    for n, p in dtensors.items():
        meshes.setdefault(p.device_mesh, n)
    if len(meshes) > 1:
        (ma, a), (mb, b) = list(meshes.items())[:2]
        raise ValueError(
            f"parameters {a} and {b} are DTensors on different meshes ({ma} and {mb}); kerzoo "
            "averages each loss over one mesh's ranks: shard every trained tensor on the same mesh"
        )
    mesh = next(iter(meshes))
    return mesh.get_group(), torch.device(mesh.device_type)


def mean_over(value: float, group: Any, device: torch.device) -> float:
    """The mean of ``value`` over the group's ranks (float64; a non-finite value stays so)."""
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, group=group)
    return float(t) / dist.get_world_size(group)


def rebind(infos: list, dtensors: list[tuple[int, Any]]) -> None:
    """Point each DTensor's ParamInfo at its current local shard: FSDP2 replaces a local tensor
    when the parameter was changed under it (``load_state_dict(assign=True)``, ``to_empty``)."""
    with torch.no_grad():
        for t, p in dtensors:
            local = p.to_local()
            if local is not infos[t].tensor:
                infos[t].tensor = local


def refuse(opt: Any, clip: float, projection: Any) -> None:
    """What a rank holding only its rows of each tensor cannot do right, refused at build time."""
    first = opt.infos[opt._dtensors[0][0]].name
    if clip:
        raise ValueError(
            f"clip = {clip} clips by each tensor's norm, which a rank holding only its shard of "
            f"{first} (a DTensor, FSDP2) does not know; use clip = 0 with a sharded model"
        )
    if not projection.shardable:
        raise ValueError(
            f"projection {projection.name!r} builds each direction from the whole tensor, so it "
            f"cannot perturb {first}, a DTensor shard (FSDP2); use a projection that shards "
            "(every built-in one does: dense, hessian, subspace, lowrank, aligned) or an unsharded "
            "model"
        )


def refuse_mode(opt: Any) -> None:
    """FSDP2 swaps each module's parameters for gathered ones during its forward, so the hooks of
    the on-the-fly and outputs modes would not find the optimizer's tensors: in place only."""
    if opt.mode != "inplace":
        first = opt.infos[opt._dtensors[0][0]]
        low = first.tensor.dtype in (torch.float16, torch.bfloat16)
        dtype = str(first.tensor.dtype).replace("torch.", "")
        why = f" (the default for {dtype} parameters)" if low else ""
        raise ValueError(
            f"perturb={opt.mode!r}{why} is not supported yet for DTensor parameters such as "
            f"{first.name} (a model sharded with FSDP2's fully_shard); build the optimizer with "
            "perturb='inplace'"
            + (
                f" (each restore of a {dtype} shard then rounds), or keep the shards in fp32"
                if low
                else ""
            )
        )


def fsdp_modules(module: Any, first: str) -> list:
    """The module's FSDP2 modules (``fully_shard``), which the optimizer reshards around forwards.

    FSDP2 keeps the root's parameters gathered after a forward (``reshard_after_forward`` is False
    for the root, and for any module the user set so), and a gathered module is not gathered again:
    its next forward would read the old values, not the shards the optimizer just moved. So the
    optimizer reshards every FSDP module before and after its forwards; the next forward then
    gathers the shards as they are."""
    if module is None:
        raise ValueError(
            f"parameter {first} is a DTensor (a model sharded with FSDP2's fully_shard) and no "
            "module was given: pass the model itself, kerzoo.optimizer(name, model) (or module= "
            "beside param groups), so that kerzoo can reshard it between forwards"
        )
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch before FSDP2
        return []
    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def reshard(modules: list) -> None:
    """Free the gathered parameters of every FSDP module: the next forward gathers the shards."""
    for m in modules:
        m.reshard()
