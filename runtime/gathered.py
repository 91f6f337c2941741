"""FSDP2 all-gather of MXFP4 weights: the sharded-weight and gathered-weight tensor subclasses, and their op.

FSDP2 (``fully_shard``) gathers a parameter's shards before its module runs.
A parameter whose local shard is a :class:`FP4AllGatherWeight` is gathered as
MXFP4 instead of in the parameter dtype (FSDP2's ``fsdp_pre_all_gather`` /
``fsdp_post_all_gather`` extension points):

* ``fsdp_pre_all_gather`` quantizes the local rows with the forward QuEST
  quantizer (``fp4::quest_quantize(w, True)``) and hands FSDP the codes
  ``[n, K/2]``, scales ``[n, K/32]`` and clip mask ``[n, K/8]`` (uint8) to
  gather: 21/32 B per element instead of 2 (bf16) or 4 (fp32).  MXFP4 groups
  and the rotation run along K while FSDP shards along N (dim 0), and the
  quantizer is deterministic, so the gathered rows are exactly the rows of the
  quantization of the whole weight.
* ``fsdp_post_all_gather`` wraps the gathered codes, scales and mask (no copy)
  in a :class:`MXFP4Weight` of the weight's shape and dtype: the unsharded
  parameter the module sees.
* A weight whose N rows do not split evenly over the ranks (FSDP pads the
  last shards with zero rows) gathers its codes, scales and mask packed in one
  uint8 buffer of the padded shard's shape ``[ceil(N / ranks), K]``, as FSDP2
  requires of such a parameter's all-gather inputs: 1 B per element, the
  padding rows zero (:func:`pack_rows`).  They gather after the last real row;
  ``fsdp_post_all_gather`` unpacks the columns and FSDP keeps the first N rows.
  A single rank (FSDP2 then copies one all-gather input instead of gathering)
  takes the same form.

An :class:`MXFP4Weight` carries no dense values: the QuEST quantization of the
weight is all it knows.  ``fp4::quest_quantize`` of it returns the gathered
codes (what the eager oracle calls, :mod:`fp4.runtime.oracle`), and a GEMM on it
in a traced graph reads it through ``fp4::gathered_weight``, which the
``quartet-linear`` pass replaces by the codes themselves.  Any other use is an
error that says so: a dense weight cannot be recovered from its FP4 codes.
"""

from __future__ import annotations

import torch
import torch.utils._pytree as pytree
from torch._subclasses.fake_tensor import is_fake

from .library import fp4_op

aten = torch.ops.aten

NOT_DENSE = (
    "a weight gathered as MXFP4 codes (fp4.distributed.enable_fp4_all_gather) has no dense values; only an "
    "fp4-quartetized layer (fp4.quartetize) or a layer the fp4 backend rewrites can use it"
)


@fp4_op("fp4::gathered_weight")
def gathered_weight(
    codes: torch.Tensor, scales: torch.Tensor, mask: torch.Tensor, rotate: bool, dtype: torch.dtype
) -> torch.Tensor:
    """The ``[N, K]`` weight (in ``dtype``) whose QuEST quantization is ``codes, scales, mask``.

    A marker for traced graphs: ``quartet-linear`` takes the codes, scales and
    mask from its arguments instead of quantizing the weight, and refuses a
    graph where it is left.  It cannot be computed.
    """
    raise RuntimeError(f"fp4::gathered_weight cannot be computed: {NOT_DENSE}")


@gathered_weight.register_fake
def _(codes, scales, mask, rotate, dtype):
    return codes.new_empty((codes.shape[0], codes.shape[1] * 2), dtype=dtype)


OPS = {"gathered_weight": gathered_weight}


def _wrapper(cls, shape, like: torch.Tensor, dtype: torch.dtype, requires_grad: bool = False):
    return torch.Tensor._make_wrapper_subclass(
        cls, shape, dtype=dtype, device=like.device, layout=torch.strided, requires_grad=requires_grad
    )


class MXFP4Weight(torch.Tensor):
    """An unsharded weight ``[N, K]`` known only by its gathered MXFP4 codes, scales and clip mask.

    ``rotate`` says whether the codes are of the rotated weight (the algorithm)
    or of the weight itself; ``transposed`` marks the ``[K, N]`` view ``w.t()``
    that a linear layer's GEMM takes.  Traceable (``__tensor_flatten__``), so
    Dynamo and AOTAutograd pass the three uint8 tensors as graph inputs.
    """

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, codes, scales, mask, rotate: bool, dtype: torch.dtype, transposed: bool = False):
        rows, k = codes.shape[0], codes.shape[1] * 2
        shape = (k, rows) if transposed else (rows, k)
        return _wrapper(cls, shape, codes, dtype)

    def __init__(self, codes, scales, mask, rotate: bool, dtype: torch.dtype, transposed: bool = False):
        self.codes, self.scales, self.mask = codes, scales, mask
        self.rotate, self.transposed = rotate, transposed

    def __repr__(self) -> str:
        return f"MXFP4Weight(shape={tuple(self.shape)}, dtype={self.dtype}, rotate={self.rotate})"

    def __tensor_flatten__(self):
        return ["codes", "scales", "mask"], (self.rotate, self.dtype, self.transposed)

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        rotate, dtype, transposed = meta
        return MXFP4Weight(inner["codes"], inner["scales"], inner["mask"], rotate, dtype, transposed)

    def _like(self, transform=lambda t: t, transposed=None) -> MXFP4Weight:
        return MXFP4Weight(
            transform(self.codes), transform(self.scales), transform(self.mask), self.rotate, self.dtype,
            self.transposed if transposed is None else transposed,
        )  # fmt: skip

    def quantized(self, rotate: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``fp4::quest_quantize(w, rotate)`` of the weight: the gathered codes, scales and mask."""
        if self.transposed:
            raise RuntimeError("fp4::quest_quantize of a transposed MXFP4Weight: the codes run along K, not N")
        if rotate != self.rotate:
            raise RuntimeError(
                f"the weight was gathered as MXFP4 with rotate={self.rotate}, but is quantized with rotate={rotate}"
            )
        return self.codes, self.scales, self.mask

    def dense(self) -> torch.Tensor:
        """The ``fp4::gathered_weight`` marker of this weight (in a traced graph only)."""
        if not is_fake(self.codes):
            raise RuntimeError(NOT_DENSE)
        weight = torch.ops.fp4.gathered_weight(self.codes, self.scales, self.mask, self.rotate, self.dtype)
        return weight.t() if self.transposed else weight

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        weight = args[0] if args and isinstance(args[0], MXFP4Weight) else None
        if func is torch.ops.fp4.quest_quantize.default and weight is not None:
            return weight.quantized(*args[1:], **kwargs)
        if weight is not None and func in (aten.detach.default, aten.alias.default):
            return weight._like()
        if weight is not None and func is aten.clone.default:
            return weight._like(torch.clone)
        if weight is not None and (
            func is aten.t.default
            or (func is aten.transpose.int and sorted(d % 2 for d in args[1:3]) == [0, 1])
            or (func is aten.permute.default and [d % 2 for d in args[1]] == [1, 0])
        ):
            return weight._like(transposed=not weight.transposed)
        if weight is not None and func in (aten.view.default, aten._unsafe_view.default, aten.reshape.default):
            if tuple(args[1]) == tuple(weight.shape):
                return weight._like()
        if weight is not None and func is aten.as_strided.default and not weight.transposed:
            # FSDP2 views the gathered (row-padded) result as the parameter: the first N rows.
            size, stride = tuple(args[1]), tuple(args[2])
            offset = args[3] if len(args) > 3 else kwargs.get("storage_offset", 0)
            if len(size) == 2 and size[1] == weight.shape[1] and stride == (size[1], 1) and not offset:
                return weight._like(lambda t: t[: size[0]])
        if func in (aten.mm.default, aten.addmm.default):
            args, kwargs = pytree.tree_map_only(MXFP4Weight, MXFP4Weight.dense, (args, kwargs))
            return func(*args, **kwargs)
        raise NotImplementedError(f"{func} on an MXFP4Weight: {NOT_DENSE}")


# Ops FSDP2 applies to a parameter while sharding it, padding the shard and copying it in: their results
# stay FP4AllGatherWeight so that the local shard keeps the all-gather extension.
_PRESERVED = {
    aten.empty_like.default,
    aten.new_zeros.default,
    aten.new_empty.default,
    aten.slice.Tensor,
    aten.narrow.default,
    aten.copy_.default,
    aten.view.default,
    aten.as_strided.default,
    aten._to_copy.default,
    aten.split.Tensor,
    aten.chunk.default,
    aten.clone.default,
    aten.detach.default,
    aten.alias.default,
}


class FP4AllGatherWeight(torch.Tensor):
    """A dense weight (the master copy the optimizer updates) that FSDP2 gathers as MXFP4 codes.

    Every op sees the wrapped tensor; the ones FSDP2 shards and copies with keep
    the wrapper.  ``rotate`` is the rotation of the forward quantizer.
    """

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, tensor: torch.Tensor, rotate: bool = True):
        return torch.Tensor._make_wrapper_subclass(
            cls, tensor.size(), strides=tensor.stride(), storage_offset=tensor.storage_offset(),
            dtype=tensor.dtype, layout=tensor.layout, device=tensor.device, requires_grad=tensor.requires_grad,
        )  # fmt: skip

    def __init__(self, tensor: torch.Tensor, rotate: bool = True):
        self._tensor, self.rotate = tensor, rotate

    def __repr__(self) -> str:
        return f"FP4AllGatherWeight({self._tensor!r})"

    def __tensor_flatten__(self):
        return ["_tensor"], self.rotate

    @staticmethod
    def __tensor_unflatten__(inner, rotate, outer_size, outer_stride):
        return FP4AllGatherWeight(inner["_tensor"], rotate)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        rotate = next(a.rotate for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, FP4AllGatherWeight))
        args, kwargs = pytree.tree_map_only(FP4AllGatherWeight, lambda t: t._tensor, (args, kwargs or {}))
        out = func(*args, **kwargs)
        if func not in _PRESERVED:
            return out
        return pytree.tree_map_only(torch.Tensor, lambda t: FP4AllGatherWeight(t, rotate), out)

    # ------------------------------------------------------------------ FSDP2 extension points

    def fsdp_pre_all_gather(self, mesh, outer_size, outer_stride, module, mp_policy):
        weight = self._tensor
        param_dtype = getattr(mp_policy, "param_dtype", None)
        if param_dtype is not None and param_dtype != weight.dtype:
            weight = weight.to(param_dtype)  # what FSDP would gather, and the oracle of that model would quantize
        codes, scales, mask = torch.ops.fp4.quest_quantize(weight, self.rotate)
        rows, k = outer_size
        ranks = mesh.size()
        if rows % ranks == 0 and ranks > 1:
            return (codes, scales, mask), (self.rotate, None)
        return (pack_rows(codes, scales, mask, -(-rows // ranks)),), (self.rotate, k)

    def fsdp_post_all_gather(self, all_gather_outputs, metadata, param_dtype, *, out=None):
        rotate, packed_k = metadata
        if packed_k is None:
            codes, scales, mask = all_gather_outputs
        else:
            codes, scales, mask = unpack_rows(all_gather_outputs[0], packed_k)
        if out is not None:
            # A later all-gather writes into the buffers the first one created, which ``out`` views already
            # (even shards); packed shards are unpacked into the weight's own buffers, which FSDP re-allocated.
            # The backward of the forward saved them: a refill is not a new version (FSDP's copy-out does the same).
            for mine, gathered in ((out.codes, codes), (out.scales, scales), (out.mask, mask)):
                if mine.data_ptr() != gathered.data_ptr():
                    with torch.autograd._unsafe_preserve_version_counter(mine):
                        mine.copy_(gathered[: mine.shape[0]])
            return None
        if packed_k is None:
            # The codes, scales and mask are views of FSDP's all-gather buffers, which FSDP frees and refills.
            return MXFP4Weight(codes, scales, mask, rotate, param_dtype), ()
        # Contiguous copies of the packed buffer's columns; FSDP frees them at reshard, re-allocates them
        # before the next all-gather, and the ``out=`` call above refills them.
        inner = tuple(t.contiguous() for t in (codes, scales, mask))
        return MXFP4Weight(*inner, rotate, param_dtype), inner


def packed_columns(k: int) -> tuple[slice, slice, slice]:
    """The columns of the codes, scales and clip mask in a packed row of ``k`` bytes (21/32 of them used)."""
    codes, scales, mask = k // 2, k // 32, k // 8
    return slice(0, codes), slice(codes, codes + scales), slice(codes + scales, codes + scales + mask)


def pack_rows(codes: torch.Tensor, scales: torch.Tensor, mask: torch.Tensor, padded_rows: int) -> torch.Tensor:
    """The local rows' codes, scales and mask in one ``uint8 [padded_rows, K]`` buffer, padding rows zero.

    FSDP2 requires an unevenly sharded parameter's all-gather inputs to have
    the padded shard's shape ``[ceil(N / ranks), K]`` (every rank then
    contributes the same bytes); one uint8 row of K bytes holds a row's K/2
    code bytes, K/32 scales and K/8 mask bytes.  The padding rows gather after
    the last real row, and the gathered weight is the first N rows.
    """
    rows, k = codes.shape[0], codes.shape[1] * 2
    packed = codes.new_zeros((padded_rows, k))
    for columns, part in zip(packed_columns(k), (codes, scales, mask)):
        packed[:rows, columns] = part
    return packed


def unpack_rows(packed: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views of the codes, scales and clip mask in gathered packed rows (:func:`pack_rows`)."""
    return tuple(packed[:, columns] for columns in packed_columns(k))
