#!/usr/bin/env bash
# Execute the notebooks (quick profile) into OUT/ with their own results and caches, under the code path the
# caller's environment chooses: ATEN_CPU_CAPABILITY / MKL_CBWR for the CPU, DEVICE=auto for a GPU. Then compare
# runs with scripts/regeneration.py. Without Jupyter (e.g. on a GPU machine) the cells run as plain Python.
# Usage: [NOTEBOOKS="notebooks/01_*.ipynb ..."] [DEVICE=auto] scripts/run_code_path.sh OUT
set -euo pipefail
out=$(realpath -m "$1")
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out/notebooks"
export SPIKEHIJACK_RESULTS="$out/results" SPIKEHIJACK_CACHE="$out/cache"
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 PYTHONHASHSEED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
params=()
[ -n "${DEVICE:-}" ] && params=(-p device "$DEVICE")
for nb in ${NOTEBOOKS:-notebooks/[0-9][0-9]_*.ipynb}; do
  start=$(date +%s)
  log="$out/$(basename "$nb" .ipynb).log"
  if "$py" -c "import papermill" 2>/dev/null; then
    args=("${params[@]}")
    grep -q '"device = ' "$nb" || args=()  # papermill warns about parameters a notebook does not declare
    "$py" -m papermill --cwd notebooks -k python3 --no-progress-bar "${args[@]}" "$nb" \
      "$out/notebooks/$(basename "$nb")" >"$log" 2>&1 || { echo "FAILED $nb (see $log)"; exit 1; }
  else
    PYTHONPATH=. "$py" scripts/exec_notebooks.py "${params[@]}" "$nb" >"$log" 2>&1 || { echo "FAILED $nb (see $log)"; exit 1; }
  fi
  echo "$(basename "$nb") $(( $(date +%s) - start )) s"
done
