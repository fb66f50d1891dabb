#!/usr/bin/env bash
# The GPU checks in one run: tests/test_gpu.py on CUDA (training, the attack, committee MD, the
# calculator, checkpoints follow the CPU), then benchmarks/committee_speed.py --json on CUDA;
# logs, the GPU's name and the JSON under $OUT (or benchmarks/results/gpu).
#
#   bash benchmarks/gpu_check.sh [committee_speed options, e.g. --quick]
#   bash benchmarks/gpu_check.sh --fetch-wheels   # here, before a run on a machine that lacks ase/vesin
#
# A machine whose python3 has CUDA torch, numpy, scipy, matplotlib, tqdm, pyyaml and pytest but no
# package registry: --fetch-wheels downloads ase, vesin and tblite (with cffi) wheels for Python 3.12 into .whl/ (ignored
# by git); carry .whl there and this script installs them into /tmp/site. Without .whl/ it uses the
# python3 environment as it is (an install of advsample, as on a workstation with a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fetch-wheels" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "ase>=3.29" "vesin>=0.3" "tblite>=0.4" cffi pycparser
  exit 0
fi
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, '| CUDA:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')" | tee "$out/device.txt"
status=0
python3 -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/test_gpu.log" || status=1
python3 benchmarks/committee_speed.py --json "$@" 2>&1 | tee "$out/committee_speed.log" || status=1
tail -n 1 "$out/committee_speed.log" > "$out/committee_speed.json"
exit "$status"
