#!/usr/bin/env bash
# The wheels bench/gpu.py needs on the GPU machine, which reaches no package registry and has
# its own Python 3.12 and PyTorch (with numpy, safetensors, einops, tqdm, pyyaml, psutil,
# huggingface-hub, requests, pillow, ninja, msgpack, py-cpuinfo and packaging), into .whl/
# (git-ignored), at the versions of requirements.lock. DeepSpeed ships as source only: its
# pure-Python wheel is built here (no ops; the engine builds what it needs there). Stops when
# the wheels would not fit the 64 MiB that travel with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=.whl
LIMIT_MIB=${LIMIT_MIB:-48}     # of the 64 MiB a call carries, the rest is the repository
pin() { grep -i "^$1==" requirements.lock | head -1; }

rm -rf "$OUT" && mkdir -p "$OUT"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$OUT" \
    "$(pin pydantic)" "$(pin pydantic_core)" "$(pin annotated-types)" \
    "$(pin typing-inspection)" "$(pin hjson)" "$(pin diffusers)"
DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$OUT" \
    "$(pin deepspeed)"

size_mib=$(( $(du -sk "$OUT" | cut -f1) / 1024 ))
ls -1 "$OUT"
echo "$OUT: ${size_mib} MiB (limit ${LIMIT_MIB} MiB)"
if [ "$size_mib" -gt "$LIMIT_MIB" ]; then
    echo "the wheels are too large to travel with the working tree" >&2
    exit 1
fi
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
