#!/usr/bin/env bash
# The CUDA path in minutes, on a GPU machine, as one Markdown report:
#   bash scripts/gpu_check.sh                    # on a machine with CUDA GPUs (about 6 minutes on one)
#   bash scripts/gpu_check.sh --dry-run          # the same checks on the CPU (gloo, bf16 where fast): the script itself
#   bash scripts/gpu_check.sh --out DIR          # where the report and logs go (default: runs/gpu_check)
# Checks, each under its own time limit, each a row of DIR/report.md (pass / FAIL / skipped, seconds, what it
# measured): the CUDA-marked tests (tests/test_cuda.py); a few training epochs in fp16 with loss scaling and in
# bf16; DistributedDataParallel over every GPU present (NCCL); train.compile; a run killed with SIGKILL
# after its first checkpoint and resumed, against the same run uninterrupted; and scripts/benchmark.py's table
# on the device (captions/s, images/s, peak memory). The exit status is 1 if any check failed.
# Run after `bash scripts/setup.sh` (it makes .venv); the data are made here (synthetic shapes, no download).
set -uo pipefail
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$0")/.."

dry=0
out=runs/gpu_check
internal=0
while [ $# -gt 0 ]; do
  case "$1" in
    __step) internal=1; shift; break ;;
    --dry-run) dry=1 ;;
    --out) out=$2; shift ;;
    -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

python=.venv/bin/python
captioner=.venv/bin/captioner
work=${work:-$out/work}

shapes() { "$captioner" data shapes --out "$work/shapes" --train 1024 --val 64 --test 64 --image-size 32; }
# a small_cnn captioner on the shapes, small enough for an epoch in seconds: its recipe (the array `recipe`,
# set when a check runs: device and work are known then), trained in one process or in DDP
set_recipe() {
  recipe=(--config configs/shapes_small_cnn.yaml data.root="$work/shapes" data.image_size=32 encoder.grid_size=4
    encoder.width=32 decoder.hidden_dim=128 train.batch_size=64 train.max_minutes=3 train.val_metrics=bleu
    train.device="$device")
}
train() { set_recipe; "$captioner" train "${recipe[@]}" "$@"; }
ddp() {
  set_recipe
  OMP_NUM_THREADS=$threads .venv/bin/torchrun --standalone --nproc-per-node "$gpus" -m captioner train \
    "${recipe[@]}" "$@"
}

# Killed with SIGKILL once the first checkpoint (last.pt) is written, then resumed; compared with the same run
# uninterrupted (fp32). On a CPU the weights agree bit for bit; cuDNN's kernels need not.
kill_and_resume() {
  train train.run_dir="$work/straight" train.epochs=3 || return 1
  # a process group of its own, so that SIGKILL reaches the training process and its loader's workers at once
  setsid bash "$self" __step train train.run_dir="$work/killed" train.epochs=3 &
  local pid=$!
  while kill -0 $pid 2>/dev/null && [ ! -f "$work/killed/last.pt" ]; do sleep 0.1; done
  kill -9 -- -$pid 2>/dev/null
  wait $pid 2>/dev/null
  echo "killed with $(wc -l <"$work/killed/metrics.jsonl") of 3 epochs logged"
  train train.run_dir="$work/killed" train.epochs=3 --resume || return 1
  $python - "$work" <<'PY'
import sys
import torch
from captioner.checkpoint import load_checkpoint
a, b = (load_checkpoint(f"{sys.argv[1]}/{name}/last.pt") for name in ("straight", "killed"))
epochs = (a["training"]["epoch"], b["training"]["epoch"])
worst = max((a["model"][k].float() - b["model"][k].float()).abs().max().item() for k in a["model"])
print(f"epochs {epochs[0]} and {epochs[1]}, largest weight difference {worst:.2e}")
sys.exit(0 if epochs == (3, 3) and worst < 1e-3 else 1)
PY
}

# A check that is a function here runs in a fresh copy of this script (`timeout` runs programs, not shell
# functions): gpu_check.sh __step FUNCTION ARGS..., with device, gpus, threads and work in the environment
if [ $internal = 1 ]; then
  "$@"
  exit $?
fi

[ -x $python ] || { echo "gpu_check.sh: no .venv here: run bash scripts/setup.sh first" >&2; exit 2; }
rm -rf "$out"
mkdir -p "$out/logs"
report=$out/report.md
failed=0
cores=$(nproc --all)

if [ $dry = 1 ]; then
  device=cpu
  gpus=2 # two gloo processes stand in for the GPUs, a thread each
  threads=1
  half=none # fp16 with loss scaling is for GPUs: the dry run trains this step in fp32
  bf16=$($python -c 'import torch; from captioner.device import fast_bf16; print("bf16" if fast_bf16(torch.device("cpu")) else "none")')
else
  device=cuda
  gpus=$($python -c 'import torch; print(torch.cuda.device_count())')
  if [ "$gpus" -lt 1 ]; then
    echo "gpu_check.sh: torch sees no CUDA device here (use --dry-run on a CPU machine)" >&2
    exit 2
  fi
  threads=$((cores / gpus > 0 ? cores / gpus : 1))
  half=fp16
  bf16=$($python -c 'import torch; print("bf16" if torch.cuda.is_bf16_supported() else "none")')
fi
export device gpus threads work

{
  echo "# GPU check$([ $dry = 1 ] && echo ' (dry run on the CPU)')"
  echo
  echo "\`bash scripts/gpu_check.sh$([ $dry = 1 ] && echo ' --dry-run')\` at commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u '+%Y-%m-%d %H:%M UTC')."
  echo
  echo '```'
  $python -c 'import platform, torch; print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| Python", platform.python_version())'
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  else
    echo "no nvidia-smi"
  fi
  echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $cores cores"
  echo '```'
  echo
  echo "| check | result | seconds | measured |"
  echo "|---|---|---|---|"
} >"$report"

# row NAME RESULT SECONDS MEASURED: one line of the report's table
row() { echo "| $1 | $2 | $3 | $4 |" >>"$report"; }

# check NAME LIMIT MEASURE COMMAND...: run COMMAND (its output in logs/NAME.txt) for at most LIMIT seconds; the
# row gives pass or FAIL and what the shell function MEASURE prints (called with the log's path)
check() {
  local name=$1 limit=$2 measure=$3
  shift 3
  local log="$out/logs/$name.txt" start=$SECONDS status result
  echo "== $name: $*" >&2
  if declare -F "$1" >/dev/null; then set -- bash "$self" __step "$@"; fi
  timeout --signal=INT --kill-after=20 "$limit" "$@" >"$log" 2>&1
  status=$?
  if [ $status = 0 ]; then
    result=pass
  else
    result="FAIL (exit $status$([ $status = 124 ] && echo ", past ${limit} s"))"
    failed=1
    tail -n 20 "$log" | sed 's/^/    /' >&2
  fi
  row "$name" "$result" $((SECONDS - start)) "$($measure "$log" 2>/dev/null | tr '\n|' ' /')"
}

nothing() { :; }
pytest_summary() { tail -n 1 "$1"; }
# the last epoch's loss and speed, from the run folder named on the log's last line ("best checkpoint: ...")
last_epoch() {
  local run
  run=$(sed -n 's/^best checkpoint: //p' "$1" | tail -1)
  $python - "$(dirname "$run")/metrics.jsonl" <<'PY'
import json, sys
row = json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(f"epoch {row['epoch']}: loss {row['loss']:.3f}, {row['captions_per_s']:.0f} captions/s, val BLEU-4 {row.get('val_bleu4', 0):.1f}")
PY
}

check data 120 nothing shapes

if [ $dry = 1 ]; then
  check cuda-tests 600 pytest_summary env CAPTIONER_TEST_DEVICE=cpu $python -m pytest -m cuda tests/test_cuda.py
else
  check cuda-tests 600 pytest_summary $python -m pytest -m cuda tests/test_cuda.py
fi

if [ $half = none ]; then
  row "train fp16 + GradScaler" skipped 0 "fp16 is for GPUs"
else
  check "train fp16 + GradScaler" 300 last_epoch train train.run_dir="$work/fp16" train.epochs=3 train.amp=fp16
fi
if [ "$bf16" = none ]; then
  row "train bf16" skipped 0 "no fast bf16 on this $device"
else
  check "train bf16" 300 last_epoch train train.run_dir="$work/bf16" train.epochs=3 train.amp=bf16
fi

check "DDP, $gpus processes ($([ $dry = 1 ] && echo gloo || echo NCCL))" 300 last_epoch ddp \
  train.run_dir="$work/ddp" train.epochs=2
check "train.compile" 400 last_epoch train train.run_dir="$work/compile" train.epochs=2 train.compile=true

weights_line() { tail -n 1 "$1"; }
check "kill -9 and --resume" 400 weights_line kill_and_resume

if [ $dry = 1 ]; then
  bench=(--device cpu --recipe cpu --dtype fp32 --task train-grids caption-grids --beams 3 --repeats 1)
else
  bench=(--device cuda --recipe all --dtype all --task all --beams 1 3 --repeats 1)
fi
check benchmark 420 nothing $python scripts/benchmark.py "${bench[@]}" --output "$out/benchmark.md"

{
  echo
  echo "## Benchmark (\`python scripts/benchmark.py ${bench[*]}\`)"
  echo
  if [ -s "$out/benchmark.md" ]; then cat "$out/benchmark.md"; else echo "(no table: see logs/benchmark.txt)"; fi
  echo
  echo "Logs of every check: \`$out/logs/\`."
} >>"$report"
echo "report: $report" >&2
cat "$report"
exit $failed
