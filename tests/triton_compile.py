"""Compile the fused kernels for a Hopper GPU (sm_90) without one: ``python tests/triton_compile.py fp32``.

Run in its own process by tests/test_triton.py, with TRITON_INTERPRET unset (kernels decorated in interpreter
mode cannot be compiled). Prints one line per kernel and exits non-zero on the first failure.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ["TRITON_INTERPRET"] = "0"
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from spikehijack.core import triton_kernels as tk

    dtype = sys.argv[1]
    ptrs = dict(q_ptr=f"*{dtype}", d_ptr=f"*{dtype}", dd_ptr=f"*{dtype}", mask_ptr="*u8", idx_ptr="*i32")
    for kind, k in ((tk.TOPK, 4), (tk.SOFTMAX, 1)):
        consts = dict(KIND=kind, K=k, KP=max(1, 1 << (k - 1).bit_length()), HAS_MASK=True, WIDEN=False,
                      PREC="ieee" if dtype == "fp32" else None, BLOCK_R=64, BLOCK_M=64, BLOCK_D=128)
        for fn in (tk.fwd, tk.bwd_docs, tk.bwd_rows):
            c = {n: v for n, v in consts.items() if n in fn.arg_names}
            sig = {n: "constexpr" if n in c else ptrs.get(n, "*fp32" if n.endswith("_ptr") else
                                                        "fp32" if n in ("scale", "inv_tau") else "i32")
                   for n in fn.arg_names}
            kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=c), target=GPUTarget("cuda", 90, 32),
                                    options=dict(num_warps=4, num_stages=2))
            assert kernel.asm["cubin"], f"{fn.__name__} kind={kind} produced no machine code"
            print(f"{fn.__name__} kind={kind} k={k} {dtype}: {len(kernel.asm['cubin'])} bytes of sm_90 code")
