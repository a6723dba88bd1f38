#!/usr/bin/env bash
# Every CUDA check in one run, for a GPU machine, from the repository root (dependencies installed):
#   bash benchmarks/cuda_check.sh FRAMES_FOLDER
# 1. stages 1-4 with mixed precision (bf16, then fp16 + GradScaler), pinned memory, and a DDP epoch in an
#    NCCL process group (cuda_check.py);
# 2. stages 1 and 2 launched by torchrun on the GPU (one process: they run without a process group);
# 3. stage 2's pass against a plain forward pass at 224 px with a randomly initialised vit_base_patch16_224,
#    every heatmap kind (target <= 1.05 for the CLS kinds);
# 4. detect.py's images/s on camera-trap frames with the same ViT-B and the paper's 128x128 CAE, decoded on the
#    GPU and on 12 CPU workers (target 2,000 images/s), each with a profile of where the main process waits;
# 5. CAE training epochs against the bare model compute on ViT-B/16-sized heatmaps (14x14): the paper CAE on
#    144 and on 1 channel, the small CAE on 144 (target <= 1.15).
set -uo pipefail
frames=${1:?usage: bash benchmarks/cuda_check.sh FRAMES_FOLDER}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
status=0
step() { echo "=== $* ==="; "$@" || { echo "=== FAILED (exit $?): $* ==="; status=1; }; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
step python benchmarks/cuda_check.py
step torchrun --standalone --nproc_per_node=1 Train_Vit_Classifier/train.py exp=cuda-ddp device=cuda train.epochs=2
step torchrun --standalone --nproc_per_node=1 Test_Classifier/test_classifier.py exp=cuda-ddp device=cuda
step python benchmarks/bench_heatmaps.py --model vit_base_patch16_224 --device cuda --precision auto --n 2048 --batch-size 256 --repeats 3
for decode in gpu cpu; do
  step python benchmarks/bench_detect.py "$frames" --n 4000 --device cuda --workers 12 --batch-size 128 --skip-digits \
    --memory --precisions auto --decode "$decode" --no-baselines --profile 40
done
step python benchmarks/bench_cae_epoch.py --device cuda --arch paper --grid 14 --channels 144 --size 128 --n 4000 \
  --batch-size 64
step python benchmarks/bench_cae_epoch.py --device cuda --arch small --grid 14 --channels 144 --n 10000 --batch-size 64
step python benchmarks/bench_cae_epoch.py --device cuda --arch paper --grid 14 --size 128 --n 10000 --batch-size 64
exit $status
