#!/usr/bin/env bash
# Issue 26 item 4's output-size comparison, by hand from a clean tree at the repository root (on a quiet machine:
# it times backends): what each model hands the host per frame, logits or labels (the arg-max inside the ONNX
# graph, `--emit labels`, int32 as TensorRT's ArgMax gives), and the host's post-processing time, side by side in
# one bench run per model. CamVid: the committed model on the 101 CamVid val frames, INT8 calibrated on CamVid
# train. VOC: Google's model (imported from its .tflite) on the 9 crops, INT8 by 3 folds (a smoke test).
# Results: bench/results/bench_labels_camvid_val.{json,csv,png}, bench/results/bench_labels_voc_samples.*
set -euo pipefail
TRAIN=${TRAIN:-../shared/data/camvid_train}
VAL=${VAL:-../shared/data/camvid_val}
VOC=${VOC:-../shared/data/voc2012_samples}
TFLITE=${TFLITE:-../shared/models/deeplabv3_mnv2_pascal_quant.tflite}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(--backends torch-fp32,ort-fp32,ort-int8,qdq-int8 --crf none --emit logits,labels --labels-dtype int32
        --iters 30 --warmup 5 -o bench/results)
deeplab-edge bench --weights weights/deeplabv3_mnv2_camvid.pt --data "$VAL" --calib-data "$TRAIN" --calib-num 64 \
  "${common[@]}" --tag labels_camvid_val
deeplab-edge import "$TFLITE" -o "$work/deeplabv3_mnv2_pascal.pt"
deeplab-edge bench --weights "$work/deeplabv3_mnv2_pascal.pt" --data "$VOC" "${common[@]}" --tag labels_voc_samples
