#!/usr/bin/env bash
# The checks a session with a GPU runs, in one go and within a few minutes of device time, in priority
# order: build the extension for the card, the learning curve at resnet50 / 224 px, the end-to-end pretraining
# loop against its floor, the operator's tests on CUDA, the loss benchmark (fp32 and bf16),
# the pretraining-step benchmark, a short pretraining run with bf16 autocast, then fine-tuning
# (classification and segmentation, bf16) and the Eve analyses on CUDA.
#
#   bash benchmarks/gpu_checks.sh OUTDIR
#
# Each step has its own time limit, cut to what is left of the whole run's budget (BUDGET seconds,
# default 470: a session's device time is ~15 minutes, and one call may run 10; a step that would get
# under 20 s is skipped and says so), so the steps that come first — highest priority — always run.
# A failing step does not stop the next; OUTDIR receives
# log.txt (everything printed), the benchmark tables and pytest's summary. Uses the python3 on the
# PATH (a GPU image's own torch); builds in place, so nothing is installed. The last section needs
# segmentation-models-pytorch, albumentations and grad-cam importable (on a machine without a package
# index, pip-install their wheels into a folder on PYTHONPATH first); it is skipped otherwise.
set -u
OUT=${1:?usage: gpu_checks.sh OUTDIR}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
step() { echo; echo "=== $(date +%T) $*"; }
DEADLINE=$((SECONDS + ${BUDGET:-470}))
run() {
  local limit=$1 left=$((DEADLINE - SECONDS)); shift
  if [ "$left" -lt 20 ]; then echo "--- skipped: ${left} s of BUDGET left ($*)"; return 0; fi
  [ "$left" -lt "$limit" ] && limit=$left
  timeout "$limit" "$@"; local rc=$?; echo "--- rc=$rc (limit ${limit} s: $*)"; return 0
}

step machine
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

step build
if [ -z "${CUDA_HOME:-}" ]; then
  nvcc_path=$(command -v nvcc || true)
  export CUDA_HOME=${nvcc_path:+$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")}
  : "${CUDA_HOME:=/usr/local/cuda}"
fi
cc=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$cc} MAX_JOBS=${MAX_JOBS:-16} ADAM_EXT_CUDA=1
rm -f adam_ext/_C*.so
run 240 $PY setup.py -q build_ext --inplace
$PY -c "import adam_ext, json; print(json.dumps(adam_ext.build_info()))" || { echo "extension did not load"; exit 1; }

step "learning curve at resnet50 / 224 px, issue 11 (needs segmentation-models-pytorch and albumentations)"
# Adam (n = 0, 2, 4) and MoCo v2 (n = 0) for the same 3 x 4 epochs over 2,000 synthetic 512-px films,
# snapshots at 1/2 and all of the run, 16-shot heart + clavicles at 224 px fine-tuned and frozen, 10 seeds;
# resumable: a rerun of the script continues the curve where the time limit cut it.
if $PY -c "import segmentation_models_pytorch, albumentations" 2>/dev/null; then
  run 240 $PY python/experiments/learning_curve.py --out "$OUT/curve_resnet50" --budgets 0.5,1 --runs 10 --device cuda \
    --arch resnet50 --size 224 --epochs 30 --patience 10 --batch-size 16 --workers 8 --no-progress \
    --set data.root=/tmp/gpu_curve_data --set data.synthetic_n=2000 --set data.synthetic_size=512 \
    --set data.view_size=224 --set data.workers=8 --set model.backbone=resnet50 --set model.dim=128 \
    --set model.mlp_hidden=2048 --set model.K=4096 --set optim.batch_size=128 --set optim.epochs=4 \
    --set amp=bf16 --set monitor.knn_images=32
else
  echo "skipped: segmentation-models-pytorch or albumentations is not importable"
fi

step "end-to-end pretraining loop against its floor, resnet50 / 224 px / batch 256, issue 12"
# The real adam pretrain loop at the paper's settings (--preset none: resnet50, 224-px views with the paper's
# augmentations, batch 256, K = 65536) with bf16, 12 DataLoader workers and pinned memory, against the same
# step on tensors already on the GPU: 3 warm-up, 8 measured and 8 phase-synchronised steps, all inside one
# epoch of 5,000 synthetic 256-px films (train_split=all: 19 steps of 256; generated in ~20 s on 16 cores).
run 100 $PY benchmarks/bench_pretrain.py --e2e --device cuda --preset none --warmup 3 --steps 8 \
  --out "$OUT/bench_pretrain_e2e_cuda.md" --set data.dataset=synthetic --set data.root=/tmp/gpu_e2e_data \
  --set data.synthetic_n=5000 --set data.synthetic_size=256 --set data.train_split=all --set data.workers=12 \
  --set amp=bf16

step operator tests on CUDA
run 200 $PY -m pytest -q -p no:cacheprovider -k cuda tests/ops/test_pruned_info_nce.py tests/ops/test_bad_inputs.py \
  tests/ops/test_op_registration.py -rfE --junitxml="$OUT/pytest_cuda.xml"

step loss benchmark headline fp32 and bf16
run 120 $PY benchmarks/bench_loss.py --device cuda --headline --out "$OUT/bench_loss_cuda_headline.md"
run 60 $PY benchmarks/bench_loss.py --device cuda --headline --dtype bfloat16 --providers fused,eager,floor \
  --out "$OUT/bench_loss_cuda_bf16.md"

step loss benchmark sweep
run 90 $PY benchmarks/bench_loss.py --device cuda --providers fused,eager,floor --min-run-time 0.3 \
  --out "$OUT/bench_loss_cuda.md"

step pretraining step benchmark
run 120 $PY benchmarks/bench_pretrain.py --device cuda --arch resnet50 --size 224 --batch 256 --images 256 \
  --rounds 3 --out "$OUT/bench_pretrain_cuda.md"

step short pretraining with bf16 autocast
run 100 $PY -m adam_ext.cli pretrain --preset demo --out /tmp/gpu_demo --epochs 1 --no-progress \
  device=cuda amp=bf16 data.workers=8

step fine-tuning and Eve on CUDA
if $PY -c "import segmentation_models_pytorch, albumentations, pytorch_grad_cam" 2>/dev/null; then
  A="$PY -m adam_ext.cli"; S=/tmp/gpu_synth
  run 60 $A synth --out $S --n 64 --size 128 --workers 8
  run 90 $A finetune cls --dataset synthetic --data $S --init random --arch resnet18 --size 128 --epochs 2 \
    --runs 1 --batch-size 16 --workers 4 --device cuda --out /tmp/gpu_cls --no-progress amp=bf16
  run 90 $A finetune seg --data $S/scr --masks "heart,left clavicle,right clavicle" --arch resnet18 --size 128 \
    --shots 8 --runs 1 --epochs 2 --batch-size 8 --workers 4 --device cuda --out /tmp/gpu_seg --no-progress amp=bf16
  run 60 $A eve gradcam --model a=/tmp/gpu_cls/seed0/best.pt --device cuda --out /tmp/gpu_eve/gradcam --no-progress
  E="--ckpt random --arch resnet18 --data $S --split all --size 128 --device cuda --no-progress"
  run 60 $A eve locality $E --images 8 --out /tmp/gpu_eve/locality
  run 60 $A eve correspondence $E --pairs 4 --out /tmp/gpu_eve/correspondence
  run 60 $A eve compositionality $E --patches 16 --out /tmp/gpu_eve/compositionality
  run 60 $A embed random $S/images /tmp/gpu_eve/embed --arch resnet18 --dense --device cuda --limit 16 --no-progress
else
  echo "skipped: segmentation-models-pytorch, albumentations or grad-cam is not importable"
fi
echo "=== $(date +%T) done"
