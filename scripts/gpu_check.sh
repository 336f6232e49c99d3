#!/usr/bin/env bash
# Device check for issue 15 (GPU throughput): the CUDA tests of PlanSampler, then the throughput
# benchmark, within about 8 minutes on one GPU. Run from the repository root:
#
#     bash scripts/gpu_check.sh            # writes benchmarks/results/throughput_cuda.md
#
# PYTHON overrides the interpreter (default: python). Everything it writes lands in the checkout;
# with $OUT set (the device machine's output folder) the results are copied there too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "no CUDA device: this check needs one"
print("torch", torch.__version__, "on", torch.cuda.get_device_name())
PYEOF

mkdir -p benchmarks/results
status=0
# 1. The CUDA tests (about 3 minutes at most): CUDA-graph replays equal solve for four integrators
#    (a stochastic one included), compiled and CUDA-graph loops with a bfloat16 network, no host
#    synchronisation in a call. The CPU tests of PlanSampler run in CI, not here.
timeout 180 "$PY" -m pytest -q -p no:cacheprovider tests/test_fast.py -m cuda -rs 2>&1 \
    | tee benchmarks/results/gpu_check_tests.txt || status=1

# 2. The benchmark (about 5 minutes at most; it rewrites its file after every network and NFE, so a
#    run cut short by the timeout keeps the rows it measured): both networks, NFE 10 and 20, eager /
#    compiled / CUDA graph / diffusers' loop.
timeout 290 "$PY" benchmarks/gpu_throughput.py --device cuda --repeat 10 --out benchmarks/results/throughput_cuda.md \
    || status=1

if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    cp benchmarks/results/gpu_check_tests.txt "$OUT"/ 2>/dev/null || true
    cp benchmarks/results/throughput_cuda.md "$OUT"/ 2>/dev/null || true
fi
exit $status
