#!/usr/bin/env bash
# Every GPU target of the GPU-module issue in one run, under 8 minutes on one H200:
#   1. the fused-kernel tests on the GPU (tests/test_triton.py, compiled kernels; tests/test_fused.py)
#   2. `bench_scoring.py --sections cuda`: our torch path, the fused kernels and the floors in float32 and bf16,
#      and the kernel targets (fused MaxSim vs bare matmul and einsum+amax, Top-k / softmax vs MaxSim, bf16 gain)
#   3. `bench_scoring.py --sections grid --device cuda`: the paper-profile main grid trained on the GPU (timed,
#      stacks shortened and extrapolated past --grid-budget), and its final numbers against the committed CPU run
# then one CSV, gpu_targets.csv: target, shape, measured, limit, passed ("not run" where a stage could not run).
#
# Usage: benchmarks/gpu_check.sh [OUTDIR]   (default: $OUT when set, else build/gpu_check); PYTHON picks the
# interpreter (default: .venv/bin/python when present, else python3). Needs torch with CUDA and Triton (CUDA builds
# of torch bring it), pandas, pytest. `make paper` (<= 10 minutes) is a target too long for this budget: run it
# on its own (it prints each notebook's wall time).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-build/gpu_check}}"
if [ -z "${PYTHON:-}" ]; then PYTHON=python3; [ -x .venv/bin/python ] && PYTHON=.venv/bin/python; fi
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONHASHSEED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
begin=$(date +%s)
stage() { echo "== [$(( $(date +%s) - begin )) s] $*" | tee -a "$OUTDIR/gpu_check.log"; }

stage "environment"
"$PYTHON" - <<'EOF' 2>&1 | tee "$OUTDIR/env.txt"
import sys

import torch

print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA DEVICE")
try:
    import triton

    print("triton", triton.__version__)
except ImportError as exc:
    print("triton missing:", exc)
EOF

stage "1/3 fused-kernel tests on the GPU"
timeout 180 "$PYTHON" -m pytest tests/test_triton.py tests/test_fused.py --noconftest -q -rs -p no:cacheprovider \
    > "$OUTDIR/pytest.txt" 2>&1
echo $? > "$OUTDIR/pytest.rc"
tail -n 4 "$OUTDIR/pytest.txt"

stage "2/3 kernels: bench_scoring.py --sections cuda"
timeout 150 "$PYTHON" benchmarks/bench_scoring.py --sections cuda --runs 5 --out "$OUTDIR/bench" \
    > "$OUTDIR/bench_cuda.txt" 2>&1
echo $? > "$OUTDIR/bench_cuda.rc"
tail -n 30 "$OUTDIR/bench_cuda.txt"

stage "3/3 the paper-profile main grid on the GPU"
timeout 170 "$PYTHON" benchmarks/bench_scoring.py --sections grid --device cuda --grid-budget 110 \
    --out "$OUTDIR/bench" > "$OUTDIR/bench_grid.txt" 2>&1
echo $? > "$OUTDIR/bench_grid.rc"
tail -n 25 "$OUTDIR/bench_grid.txt"

stage "summary: $OUTDIR/gpu_targets.csv"
"$PYTHON" - "$OUTDIR" <<'EOF'
import sys
from pathlib import Path

import pandas as pd

out = Path(sys.argv[1])
rows = []


def add(target, measured, limit, passed, shape=""):
    rows.append(dict(target=target, shape=shape, measured=measured, limit=limit, passed=passed))


rc = (out / "pytest.rc").read_text().strip()
tail = (out / "pytest.txt").read_text().strip().splitlines()[-1:] or ["no output"]
add("fused kernels agree with the CPU reference (tests/test_triton.py on the GPU)", tail[0], "all pass", rc == "0")
kernels = out / "bench" / "cuda_targets.csv"
if kernels.exists():
    for r in pd.read_csv(kernels).itertuples():
        add(r.target, r.measured, r.limit, bool(r.passed), r.shape)
else:
    add("CUDA kernel targets (bench --sections cuda)", "not run", "", "not run")
grid = out / "bench" / "grid.csv"
if grid.exists():
    g = pd.read_csv(grid)
    note = " (partly extrapolated from fewer epochs)" if g.estimated.any() else ""
    add(f"paper main grid on one GPU, seconds{note}", round(float(g.seconds_full.sum()), 1), "<= 60",
        bool(g.seconds_full.sum() <= 60) and len(g) == 4, f"{len(g)} of 4 lengths")
else:
    add("paper main grid on one GPU, seconds", "not run", "<= 60", "not run")
agree = out / "bench" / "grid_agreement.csv"
if agree.exists() and len(pd.read_csv(agree)):
    a = pd.read_csv(agree)
    for metric, m in a.groupby("metric"):
        add(f"grid final {metric} seed means vs the committed CPU paper profile, max |diff|",
            round(float(m.abs_diff.max()), 4), f"<= {m.limit.iloc[0]}", bool(m.passed.all()),
            "lengths " + ",".join(map(str, sorted(m.length.unique()))))
else:
    add("grid results vs the committed CPU paper profile", "not run (no full-epoch stack)", "", "not run")
add("make paper (every notebook, paper profile), minutes", "not run (longer than this check)", "<= 10", "not run")
df = pd.DataFrame(rows)
df.to_csv(out / "gpu_targets.csv", index=False)
with pd.option_context("display.width", 200, "display.max_colwidth", 80):
    print(df.to_string(index=False))
EOF
stage "done"
