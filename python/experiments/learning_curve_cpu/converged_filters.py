"""Share of conv1's energy above a quarter of the sampling frequency (max(|fx|, |fy|) > 0.25 cycles/px,
filters summed over input channels, 16x16 FFT): random torchvision init vs the curve's encoders.
Measured 2026-12-02: random 0.685 (seed 0; 0.68-0.69 over inits), Adam (stage n=4 epoch 10) 0.182, MoCo v2 (epoch 30) 0.181.

    python python/experiments/learning_curve_cpu/converged_filters.py runs/curve_cpu
"""

import sys

import torch
import torchvision

from adam_ext.checkpoints import load_pretrained


def high_frequency_share(w: torch.Tensor) -> float:
    power = torch.fft.fft2(w.float().sum(1), s=(16, 16)).abs() ** 2
    f = torch.fft.fftfreq(16).abs()
    high = torch.maximum(f[:, None], f[None, :]) > 0.25
    return (power[:, high].sum() / power.sum()).item()


torch.manual_seed(0)  # the random encoder's init
run = sys.argv[1] if len(sys.argv) > 1 else "runs/curve_cpu"
encoders = {
    "random": torchvision.models.resnet18().state_dict(),
    "adam": load_pretrained(f"{run}/adam/snapshots/stage2_n4_epoch10.pt").encoder_q,
    "mocov2": load_pretrained(f"{run}/mocov2/snapshots/stage0_n0_epoch30.pt").encoder_q,
}
for name, sd in encoders.items():
    print(f"{name}: {high_frequency_share(sd['conv1.weight']):.3f}")
