#!/bin/bash
# usage: ten.sh NAME INIT [flags...] -- fine-tuned 16-shot seg, seeds 0-9, 150 epochs, lr 1e-3: the test split, once
cd /work/wt-exp2
name=$1; init=$2; shift 2
export OMP_NUM_THREADS=1 PYTHONPATH=/work/wt-exp2
[ -f /work/exp11c/ten_$name/results.json ] && exit 0
/work/main/.venv/bin/adam finetune seg --data data/curve_synthetic/scr --masks "heart,left clavicle,right clavicle" \
  --arch resnet18 --size 64 --shots 16 --batch-size 4 --lr 1e-3 --workers 0 --no-progress \
  --epochs 150 --patience 40 --runs 10 --init $init --out /work/exp11c/ten_$name "$@" > /work/exp11c/ten_$name.log 2>&1
echo EXIT $? >> /work/exp11c/ten_$name.log
