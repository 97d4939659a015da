#!/usr/bin/env bash
# The GPU check of the training loop, for the `device` tool (../shared/GPU.md: one H200, 15 minutes
# of device time per session in all, at most 10 minutes per command, nothing can be downloaded
# there, at most 64 MiB carried per call).
#
# The machine lacks transformer-lens, datasets, gguf, plotly, alt-profanity-check, trl and a few
# small packages; they travel as wheels. The SmolLM2 GGUF file (98 MB) is over one call's 64 MiB,
# so it travels in two halves, in two calls made one right after the other (the machine stays warm
# 30 s between calls and keeps /tmp):
#
#   here, once:   bash benchmarks/gpu_check.sh prepare
#   device call 1 (carry [".gpu"]):   bash benchmarks/gpu_check.sh stage
#   device call 2 (carry [".gpu2"]):  bash benchmarks/gpu_check.sh run        (timeout_s 600; its parts stop at
#                                     120 + 200 + 250 s)
#
# `profile` (instead of `run`, timeout_s 280) times the hand-written step with mechtox's parts added one at a
# time (gpu_profile.py --tool ladder), the eager step of both mechtox backends against the hand-written one, and
# profiles mechtox(hf) and the hand-written step (cProfile, then torch.profiler).
#
# `run` writes under $OUT: versions.txt; bench_eager.txt and bench_compile.txt (the benchmark at
# 32 pairs x 96 tokens in bf16: mechtox on both backends with hooks on, plain HF, TRL; without and
# with torch.compile); main.txt and the main job's summary tables (a 100-step DPO run of SmolLM2 on
# the hf backend with the main job's evaluation). Each part has its own time limit, so what
# finished comes back even if a later part runs out.
#
# On a CPU, GPU_CHECK_SMALL=1 bash benchmarks/gpu_check.sh run checks the script itself in a few
# minutes (tiny sizes; the main job at --size quick).
set -uo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"

case "$mode" in
prepare)
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  grep -qx '/.gpu2/' .git/info/exclude 2>/dev/null || echo '/.gpu2/' >> .git/info/exclude
  rm -rf .gpu .gpu2 && mkdir -p .gpu/whl .gpu2
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl transformer-lens==3.9.0 beartype better-abc fancy-einsum typeguard datasets dill multiprocess \
    gguf alt-profanity-check plotly trl==1.16.0 || exit 1
  gguf="$(.venv/bin/python -c 'from mechtox.models import smollm2_gguf_path; print(smollm2_gguf_path())')" || exit 1
  head -c 45000000 "$gguf" > .gpu/part_a
  tail -c +45000001 "$gguf" > .gpu2/part_b
  sha256sum "$gguf" | cut -c1-64 > .gpu2/sha256
  du -sh .gpu .gpu2
  ;;
stage)
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 1
  mkdir -p /tmp/smol && cp .gpu/part_a /tmp/smol/part_a
  ls -la /tmp/site | head -3; ls -la /tmp/smol
  ;;
run)
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
  PY="${PYTHON:-python3}"
  if [ -n "${GPU_CHECK_SMALL:-}" ]; then
    [ -x .venv/bin/python ] && PY=.venv/bin/python
    MODEL="${MODEL:-smollm2-135m-instruct}"; B=(--batch 2 --seq 32 --steps 1); SIZE=quick; STEPS=3
  else
    if [ -f .gpu2/part_b ]; then
      cat /tmp/smol/part_a .gpu2/part_b > "/tmp/smol/$GGUF_NAME"
      [ "$(sha256sum "/tmp/smol/$GGUF_NAME" | cut -c1-64)" = "$(cat .gpu2/sha256)" ] || { echo "GGUF checksum mismatch"; exit 1; }
    fi
    MODEL="${MODEL:-/tmp/smol/$GGUF_NAME}"; B=(--batch 32 --seq 96 --steps 10 --dtype bfloat16); SIZE=small; STEPS=100
  fi
  { "$PY" -c 'import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; } | tee "$OUT/versions.txt"
  timeout 120 "$PY" benchmarks/train_throughput.py --model "$MODEL" "${B[@]}" 2>&1 | tee "$OUT/bench_eager.txt"
  [ -z "${GPU_CHECK_SMALL:-}" ] && timeout 200 "$PY" benchmarks/train_throughput.py --model "$MODEL" "${B[@]}" --compile \
    --only mechtox-hf,hf 2>&1 | tee "$OUT/bench_compile.txt"   # (on a CPU, compiling takes longer than this limit)
  ws=/tmp/gpu_check_ws
  timeout 250 "$PY" -m mechtox run -q -w "$ws" --model "$MODEL" --size "$SIZE" --dpo-steps "$STEPS" 2>&1 \
    | tail -60 | tee "$OUT/main.txt"
  for f in "$ws"/runs/main-eval/*.csv "$ws"/runs/main/main.json; do [ -f "$f" ] && cp "$f" "$OUT/"; done
  ls "$OUT"
  ;;
profile)  # device call 2 instead of run (carry [".gpu2"], timeout_s 280): where the eager step's time goes
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
  cat /tmp/smol/part_a .gpu2/part_b > "/tmp/smol/$GGUF_NAME" || exit 1
  M="/tmp/smol/$GGUF_NAME"; read -ra A <<< "${PROFILE_ARGS:---batch 32 --seq 96 --dtype bfloat16}"  # (smaller to check it on a CPU)
  timeout 60 python3 benchmarks/gpu_profile.py --model "$M" "${A[@]}" --tool ladder 2>&1 | grep -v "GGUF\|Loading" \
    | tee "$OUT/ladder.txt"
  timeout 80 python3 benchmarks/train_throughput.py --model "$M" "${A[@]}" --steps 10 --only mechtox-hooked,mechtox-hf,hf \
    2>&1 | tee "$OUT/bench_eager.txt"
  for tool in cprofile torch; do
    timeout 60 python3 benchmarks/gpu_profile.py --model "$M" "${A[@]}" --tool $tool > "$OUT/profile_$tool.txt" 2>&1
    grep -v "^--\|USDT\|GGUF\|Loading" "$OUT/profile_$tool.txt" | cut -c1-170 | head -90
  done
  ;;
*)
  echo "usage: bash benchmarks/gpu_check.sh prepare|stage|run|profile"; exit 2 ;;
esac
