#!/usr/bin/env bash
# GPU benchmark (issue 10): UNet evals/s and % of bf16 peak (fp32/bf16, batch 8-256, compile off/on),
# sampler overhead on the device, `diffinfinite generate` at 8192 and 16384 px (50 steps, bf16) with the
# time split (sampler overhead / UNet / decode), and the tiled-decode fidelity of the SD-2 VAE.
# Writes gpu-benchmark.json (or $1) and prints a markdown table for docs/benchmarks.md.
#
#   benchmarks/gpu.sh                       # on a CUDA machine (an H200: about 20-30 min, mostly compiling)
#   benchmarks/gpu.sh out.json --quick      # no compile runs, batches 32/128/256: for a 10-15 min device budget
#   benchmarks/gpu.sh out.json --tiny       # toy sizes on any machine (checks the script; CPU fallback)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-benchmark.json}"
shift || true
if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi: CPU fallback"
uptime
"$python" -m napari_diffinfinite.benchmarks.gpu --out "$out" "$@"
