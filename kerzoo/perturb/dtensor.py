"""Parameters that are DTensors, as torch's FSDP2 (``torch.distributed.fsdp.fully_shard``) makes
them: each rank holds a block of rows of each tensor and the optimizer moves only that block.

FSDP2 shards every parameter along dim 0 (``Shard(0)``) over a 1-D mesh of W ranks: with
c = ceil(rows / W), rank r holds rows [r c, min((r + 1) c, rows)) (the last shard may be short, a
rank may hold none). Its local tensor (``p.to_local()``) is a view of the buffer FSDP all-gathers
before each forward, so writing it in place is what the next forward sees. The optimizer gives the
perturber that local tensor with ``ParamInfo.offset`` = the global flat index of its first element
and ``ParamInfo.shape`` = the whole shape: the engine then draws exactly the slice of the whole
tensor's direction, and the gathered weights follow an unsharded run.

On the fly (``ShardedOnTheFly``) the shards are written only by the update: a module's forward
sees its gathered parameters plus the whole tensor's direction, in a transient.

The loss at each point is averaged over the mesh's ranks (one all-reduce of a float64 per
forward), so every rank computes the same coefficients and applies the same update to its rows,
whether the ranks evaluated the same batch or each its own part of it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..projections.base import ParamInfo
from .onthefly import OnTheFly

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
    """In place and on the fly (ShardedOnTheFly) follow FSDP2; outputs mode does not yet, nor an
    on-the-fly projection whose state is shaped like the tensor it holds (HiZOO's Hessian: a
    rank holds its shard's rows, the forward sees the whole tensor)."""
    from ..projections.dense import Dense
    from ..projections.lowrank import LowRankDirections

    first = opt.infos[opt._dtensors[0][0]]
    if opt.mode in ("outputs", "batched"):
        raise ValueError(
            f"perturb={opt.mode!r} is not supported yet for DTensor parameters such as "
            f"{first.name} (a model sharded with FSDP2's fully_shard); use perturb='onthefly' or "
            "'inplace'"
        )
    if opt.mode == "onthefly" and not isinstance(opt.projection, (Dense, LowRankDirections)):
        raise ValueError(
            f"projection {opt.projection.name!r} keeps per-tensor state shaped like each rank's "
            f"shard (of {first.name}, a DTensor), which an on-the-fly forward over the whole "
            "gathered tensor cannot use; use perturb='inplace' with a sharded model"
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
    fsdp = fsdp2(f"parameter {first} is a DTensor (FSDP2) and kerzoo reshards its modules")
    return [m for m in module.modules() if isinstance(m, fsdp.FSDPModule)]


FSDP2_TORCH = (2, 6)  # torch.distributed.fsdp.fully_shard and FSDPModule are public from 2.6


def fsdp2(what: str) -> Any:
    """``torch.distributed.fsdp`` with FSDP2 (``fully_shard``, ``FSDPModule``); a torch before
    2.6 is refused, naming ``what`` needed it."""
    version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    try:
        import torch.distributed.fsdp as fsdp
    except ImportError:  # a torch built without torch.distributed
        fsdp = None
    if version < FSDP2_TORCH or not hasattr(fsdp, "fully_shard") or not hasattr(fsdp, "FSDPModule"):
        raise RuntimeError(
            f"{what}: this needs torch's FSDP2 (torch.distributed.fsdp.fully_shard, public in "
            f"torch 2.6), but torch is {torch.__version__}; install torch >= 2.6 "
            "(pip install 'torch>=2.6')"
        )
    return fsdp


def reshard(modules: list) -> None:
    """Free the gathered parameters of every FSDP module: the next forward gathers the shards."""
    for m in modules:
        m.reshard()


class ShardedOnTheFly(OnTheFly):
    """On the fly over FSDP2: during a module's forward its parameters are the gathered, whole
    tensors (FSDP's pre-forward hook ran first), so the pre-hook finds each one by name, copies it
    into a transient and adds the whole tensor's direction (offset 0); the forward hook puts the
    gathered tensor back before FSDP frees it. The shards are written only by the update, at their
    offsets, so the restore is exact in every dtype, FSDP2's MixedPrecisionPolicy included (the
    transient has the gathered tensor's dtype)."""

    def __init__(self, module, infos, projection, owners):
        super().__init__(torch.nn.Module(), infos, projection)  # no hooks: they are set here
        from torch.distributed.fsdp import FSDPModule

        of = {id(p): t for t, p in enumerate(owners)}
        for m in module.modules():
            owned = [(n, of[id(p)]) for n, p in m._parameters.items() if id(p) in of]
            if not owned:
                continue
            self._reserve(owners[t] for _, t in owned)
            self.handles.append(m.register_forward_pre_hook(self._pre_named(owned)))
            # before FSDP's own forward hook, which frees the gathered tensors
            self.handles.append(
                m.register_forward_hook(self._post(len(owned)), prepend=isinstance(m, FSDPModule))
            )

    def _pre_named(self, owned: list[tuple[str, int]]):
        def hook(module, args):
            rows = self._rows
            if rows is None:
                return
            items, ts = [], []
            # while the directions are added, a shard's ParamInfo describes the gathered tensor
            # (offset 0, its own shape): projections key their state by the ParamInfo
            shards: list[tuple[ParamInfo, torch.Tensor, int, Any]] = []
            try:
                for name, t in owned:
                    p = module._parameters[name]
                    if is_dtensor(p):
                        raise RuntimeError(
                            f"kerzoo (perturb='onthefly'): {self.infos[t].name} is still sharded "
                            "during its module's forward; shard the module that owns it (or one "
                            "above) with fully_shard, or use perturb='inplace'"
                        )
                    info = self.infos[t]
                    self._touched.add(id(info.tensor))
                    if info.tensor is not p:
                        shards.append((info, info.tensor, info.offset, info.shape))
                        info.tensor, info.offset, info.shape = p, 0, None
                    transient, k = self._transient(p)
                    items.append((info, transient))
                    ts.append(t)
                    self._saved.append((p, p.data, k, p.numel()))
                    p.data = transient
                self._pass(items, ts, rows)
            finally:
                for info, tensor, offset, shape in shards:
                    info.tensor, info.offset, info.shape = tensor, offset, shape

        return torch.compiler.disable(hook, recursive=True)
