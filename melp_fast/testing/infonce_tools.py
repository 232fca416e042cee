"""Benchmark tooling of the fused InfoNCE kernels (melp_kernels.infonce), kept out of the kernel file: the sm_90
compile specs of every shipped config (benchmarks/kernel_resources.py) and the matmul work the kernels launch
(benchmarks/infonce.py, tests/test_infonce.py).

- sm90_specs(D, dtype): one dict per kernel variant and shipped config, as melp_fast.testing.common.compile_spec
  takes it;
- count_matmul_flops(): a context manager counting the FLOPs of the tile dots each fused launch executes;
- local_exchange(world): the gathered-embedding backward's statistics exchange answered in-process (counting).
"""

from __future__ import annotations

from contextlib import contextmanager


class FlopCount:
    flops = 0


@contextmanager
def count_matmul_flops():
    """Matmul FLOPs (2 per multiply-add) of the fused kernels launched inside the block: the forward kernel's one
    pass over its tiles (2 M N D) and each gradient launch's Z recomputed once per column part plus P Y once
    (2 M N D (parts + 1)), plus Z once more for the row-part DS launch of a wide-D gathered gradient. Counted at the launch functions (_tri_fwd, _tri_grad), which are wrapped for the block.

        with count_matmul_flops() as c:
            loss = infonce_loss(e, t, s, "fused"); loss.backward()
        c.flops
    """
    from melp_kernels import infonce as kern

    count = FlopCount()
    fwd, grad = kern._tri_fwd, kern._tri_grad

    def tri_fwd(x, y, *a, **kw):
        count.flops += 2 * x.shape[0] * y.shape[0] * x.shape[1]
        return fwd(x, y, *a, **kw)

    def tri_grad(x, y, *a, **kw):
        _, _, chunked, parts = kern._grad_shape(x.shape[1], kern.KERNELS_INTERPRETED or not x.is_cuda,
                                                x.element_size())
        ds_launch = chunked and a[6] and kw.get("ds_rows", False)  # compute_ds: wide D's row-part DS launch
        count.flops += 2 * x.shape[0] * y.shape[0] * x.shape[1] * (parts + 1 + ds_launch)
        return grad(x, y, *a, **kw)

    kern._tri_fwd, kern._tri_grad = tri_fwd, tri_grad
    try:
        yield count
    finally:
        kern._tri_fwd, kern._tri_grad = fwd, grad


@contextmanager
def local_exchange(world: int):
    """Inside the block, the gathered-embedding backward's one collective (melp_kernels.infonce._exchange) is
    answered in-process as if every one of `world` ranks had this rank's statistics and upstream gradient: the
    work it launches is the real one, the values are not (for counting work without a process group)."""
    import torch

    from melp_kernels import infonce as kern

    real = kern._exchange

    def exchange(lse1, lse2, c, group):
        row = torch.cat([lse1.reshape(-1).float(), lse2.reshape(-1).float(), c.reshape(1).float()])
        return kern._unpack(row.expand(world, -1), lse1.shape)

    kern._exchange = exchange
    try:
        yield
    finally:
        kern._exchange = real


# ----------------------------------------------------------------------------------------------------------------
# sm_90 compile specs (benchmarks/kernel_resources.py): one dict per kernel variant and shipped config
# ----------------------------------------------------------------------------------------------------------------
_DT = {"bf16": ("bf16", 2), "fp16": ("fp16", 2), "fp32": ("fp32", 4)}


# integer arguments that are multiples of 16 at the headline shapes (B a power of two, D = 256 or 768, contiguous
# rows): Triton specialises them so at launch, which decides vector widths and async copies
_DIV_FWD = ["M", "N", "D", "stride_x", "stride_y", "diag_off", "M_BUCKET", "N_BUCKET"]
_DIV_GRAD = ["M", "N", "D", "diag_off", "stride_x", "stride_y", "stride_dx", "M_BUCKET", "N_BUCKET"]


def sm90_specs(D: int, dtype: str) -> list[dict]:
    """Every shipped (pruned) config of every kernel variant the fused path launches, at feature width D and
    input dtype "bf16" | "fp16" | "fp32": dicts with name, fn, signature, constexprs, num_warps, num_stages
    (and config, the tuple; divisible, the integer arguments Triton sees as multiples of 16 at such shapes)."""
    from melp_kernels import infonce as kern

    if not kern.HAS_TRITON:
        return []
    ty, es = _DT[dtype]
    prec = "ieee" if es == 2 else "tf32"
    ints = {k: "i32" for k in ("M", "N", "D")}
    specs = []
    fwd_sig = dict(X=f"*{ty}", Y=f"*{ty}", S="*fp32", ROW_M="*fp32", ROW_L="*fp32", COL_M="*fp32", COL_L="*fp32",
                   POS="*fp32", **ints,
                   stride_x="i32", stride_y="i32", diag_off="i32", M_BUCKET="i32", N_BUCKET="i32")
    for name, wc, wp in (("infonce_fwd_rows_cols", True, True), ("infonce_fwd_rows", False, True)):
        for c in kern.shipped_configs("fwd", D, es):
            cx = dict(BLOCK_M=c[0], BLOCK_N=c[1], BLOCK_D=c[2], WITH_COLS=wc, WITH_POS=wp, UPCAST=False,
                      PRECISION=prec, EVEN_D=D % c[2] == 0)
            cx["SAFE_COLS"] = True
            specs.append(dict(name=name, fn=kern._infonce_fwd_kernel,
                              signature=dict(fwd_sig, **{k: "constexpr" for k in cx}), constexprs=cx,
                              num_warps=c[3], num_stages=c[4], config=c, divisible=_DIV_FWD,
                              # the steady-state loop: tiles off the diagonal, no column below the underflow guard
                              hot_constexprs=dict(WITH_POS=False, SAFE_COLS=False),
                              hot_tile=(c[0] * c[1], -(-D // c[2]))))
    acc_w, n_acc, chunked, split = kern._grad_shape(D, False, es)
    grad_sig = dict(X=f"*{ty}", Y=f"*{ty}", S="*fp32", LSE_A="*fp32", LSE_B="*fp32", CS="*fp32", WA="*fp32",
                    WB="*fp32", DX=f"*{ty}", DS="*fp32", **ints, pos_coef="fp32", ds_coef="fp32", diag_off="i32",
                    stride_x="i32", stride_y="i32", stride_dx="i32", M_BUCKET="i32", N_BUCKET="i32")
    # square: one process (dE with ds, the launch with the most work); gathered: a rank's dE / dT launch, rows
    # and every rank's columns weighted, ds over the row part
    # (wide D: the gathered gradient takes its row-part DS in a DS_ONLY launch of its own)
    variants = [("infonce_grad_square", False, True, False), ("infonce_grad_gathered", True, not chunked, False)]
    if chunked:
        variants.append(("infonce_grad_gathered_ds", True, True, True))
    for name, w, ds, ds_only in variants:
        for c in kern.shipped_configs("grad", D, es):
            cx = dict(BLOCK_M=c[0], BLOCK_N=c[1], BLOCK_D=c[2], ACC_W=acc_w, N_ACC=n_acc, CHUNKED=chunked,
                      SPLIT=split, HAS_A=True, HAS_B=True, HAS_W=w, HAS_PARTNER=True, COMPUTE_DS=ds, DS_ROWS=w,
                      UPCAST=False, PRECISION=prec, EVEN_D=D % c[2] == 0, DS_ONLY=ds_only)
            specs.append(dict(name=name, fn=kern._infonce_grad_kernel,
                              signature=dict(grad_sig, **{k: "constexpr" for k in cx}), constexprs=cx,
                              num_warps=c[3], num_stages=c[4], config=c, divisible=_DIV_GRAD,
                              # the steady-state loop: tiles off the diagonal (no positives to subtract)
                              hot_constexprs=dict(HAS_PARTNER=False),
                              hot_tile=(c[0] * c[1], -(-D // c[2]) if chunked else 1)))
    return specs
