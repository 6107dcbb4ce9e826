#!/usr/bin/env bash
# The CPU CRF against pydensecrf (issue 27 item 3), by hand on a quiet machine from a clean tree at the repository
# root: `crf bench` with pydensecrf and the torch lattice side by side (same network outputs, 2 threads for PyTorch;
# pydensecrf runs on one), with the stage-by-stage profile of the lattice, on
#   1. the 9 VOC crops with the imported VOC model (DeepLab-v2's preset: its VOC cross-validated parameters),
#   2. CamVid val (101 frames) with the committed CamVid model, CRF parameters chosen on CamVid train when
#      bench/results/crf_tune_deeplabv3_mnv2_camvid_camvid_train.json exists, else the preset,
#   3. CamVid val again with DeepLab-v2's preset (a coarser lattice than the tuned theta_alpha 20 / theta_beta 2
#      give: how the ratio moves with the lattice's size).
# Results: bench/results/crf_cpu_{voc_samples,camvid_val,camvid_val_preset}.json.
set -euo pipefail
VAL=${VAL:-../shared/data/camvid_val}
VOC=${VOC:-../shared/data/voc2012_samples}
TFLITE=${TFLITE:-../shared/models/deeplabv3_mnv2_pascal_quant.tflite}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
deeplab-edge import "$TFLITE" -o "$work/mnv2_voc.pt"
deeplab-edge crf bench --weights "$work/mnv2_voc.pt" --data "$VOC" --methods pydensecrf,torch --speed-images 2 \
  --profile --threads 2 --device cpu -o bench/results/crf_cpu_voc_samples.json
tuned=bench/results/crf_tune_deeplabv3_mnv2_camvid_camvid_train.json
params=()
[ -f "$tuned" ] && params=(--crf-params "$tuned")
deeplab-edge crf bench --weights weights/deeplabv3_mnv2_camvid.pt --data "$VAL" --methods pydensecrf,torch \
  --speed-images 2 --profile --threads 2 --device cpu "${params[@]}" -o bench/results/crf_cpu_camvid_val.json
deeplab-edge crf bench --weights weights/deeplabv3_mnv2_camvid.pt --data "$VAL" --methods pydensecrf,torch \
  --speed-images 2 --profile --threads 2 --device cpu -o bench/results/crf_cpu_camvid_val_preset.json
