"""Margins of the int8 tests, in images of the digits test split (269 images; chance is 27) or
in dB, each with the measurement it comes from. The digits net of the tests (tests/helpers/
digits_net.py) and the studies' runs use them.

Why margins at all: the net is trained on the machine that runs the tests, and float training
differs with the CPU's kernels and the thread count (OMP_NUM_THREADS=1 and 2 already train
different weights on one machine), so every int8 number moves with the machine. The spreads
below were measured over 16 such nets (training seeds 0-7 x 1 and 2 threads) standing in for
the nets other machines train, on an AMD EPYC with AVX-512 VNNI, ONNX Runtime 1.32, torch 2.14;
each margin is about twice the worst case seen, and stays well clear of the failure it guards.

Int8 kernels: ONNX Runtime fuses the QDQ graph into u8 x s8 integer convolutions. With VNNI
(vpdpbusd) they accumulate exactly in int32; the float path (graph optimizations off) gave the
same counts to within 1 image on all 16 x 9 models. x86 CPUs without VNNI (AVX2 only, AVX-512
without VNNI) use vpmaddubsw, which adds adjacent u8 x s8 products in int16 with saturation.
Emulated from the models' own integers over 9 of the nets (the emulation without saturation
reproduces ONNX Runtime here to within 3 images, 6 with the planted outlier), saturation cost
per-channel models up to 66 images and per-tensor ones up to 5. The project's ONNX Runtime
sessions therefore set `session.x64quantprecision=1` where the CPU lacks VNNI
(`repvgg_lab.runtime.OnnxRunner`; the tests' bare sessions always): on those CPUs ONNX Runtime
then computes large weights in u8 x u8, exactly. On VNNI CPUs the default kernels give the
same outputs bit for bit (a test compares them), so the counts below hold on any x86-64 CPU."""

# A trained net, so accuracy and agreement mean something: fp32 measured 241-261 images.
FP32_MIN = 215

# Per-channel int8 (minmax, percentile, entropy; equalized) against fp32: measured -3..+3
# images over 64 models, ONNX Runtime's float and integer paths within 1 image of each other.
PER_CHANNEL_ALLOW = 6
# Images where per-channel int8 and fp32 disagree: measured at most 7 (8 per-tensor equalized).
PER_CHANNEL_DISAGREE = 12

# Per-tensor int8 against fp32, clean or equalized after planting: measured -5..+4 images
# (48 models); the clean net's own per-tensor rounding is the larger part of it.
PER_TENSOR_ALLOW = 10

# The planted outlier (widest channel of layer 8 x50) under per-tensor int8 must cost at least
# this many images against fp32: measured 42-158. The same x50 on a fixed channel (channel 0)
# cost 8-173 depending on the net, hence planting in the widest channel.
PLANTED_DROP = 20
# Share of that drop equalization must win back: measured 0.95 or more (to within 2 images of
# fp32 on every net).
RECOVERED_SHARE = 0.75

# The planted layer's per-tensor SQNR falls by at least this much (dB): measured 22.4-28.7;
# equalization must lift it by as much again: measured +28.5..+30.3 (12 nets).
PLANTED_SQNR_DROP_DB = 15.0
# Per-channel weights rescue its weights-only SQNR by at least this much (dB): measured
# 29.8-32.0.
PER_CHANNEL_WEIGHT_GAIN_DB = 20.0

# PyTorch fake quantization (per-channel) against fp32, on 64 calibration images: measured at
# most 1 disagreement.
FAKE_QUANT_DISAGREE = 3

# Two epochs of QAT at lr 1e-4 against the fp32 net before it: measured -10..+12 images.
QAT_ALLOW = 20
