#!/usr/bin/env bash
# Real INT8 speed without a GPU (issue 27), by hand on a quiet machine from a clean tree at the repository root:
#   1. the CamVid model on CamVid val (101 frames), every CPU runtime one at a time: ONNX Runtime FP32 and CPU INT8,
#      OpenVINO FP32 / BF16 (skipped without native bf16) / INT8 (the TensorRT QDQ model as is), the emulated QDQ
#      model; INT8 calibrated on 64 CamVid train frames (held out), 2 threads, 30 timed calls after 5;
#   2. the same with --weight-bits 7 (the QDQ weights within +-63: what OpenVINO needs on an x86 CPU without VNNI);
#   3. the VOC model on the 9 VOC crops with Google's .tflite on LiteRT beside them (3 folds: each crop scored by
#      models calibrated on the other 6);
#   4. the timing discipline's worth (timing_discipline.py).
# Results: bench/results/bench_cpu_int8_{camvid_val,camvid_val_w7,voc_samples}.{json,csv,png},
# bench/results/timing_discipline_camvid.json. Takes about 15 minutes on 2 cores.
set -euo pipefail
TRAIN=${TRAIN:-../shared/data/camvid_train}
VAL=${VAL:-../shared/data/camvid_val}
VOC=${VOC:-../shared/data/voc2012_samples}
TFLITE=${TFLITE:-../shared/models/deeplabv3_mnv2_pascal_quant.tflite}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common=(--crf none --iters 30 --warmup 5 --threads 2 -o bench/results)
deeplab-edge bench --weights weights/deeplabv3_mnv2_camvid.pt --data "$VAL" \
  --backends ort-fp32,ov-fp32,ov-bf16,ort-int8,ov-int8,qdq-int8 --calib-data "$TRAIN" --calib-num 64 \
  --tag cpu_int8_camvid_val "${common[@]}"
deeplab-edge bench --weights weights/deeplabv3_mnv2_camvid.pt --data "$VAL" \
  --backends ort-fp32,ov-int8,qdq-int8 --calib-data "$TRAIN" --calib-num 64 --weight-bits 7 \
  --tag cpu_int8_camvid_val_w7 "${common[@]}"
deeplab-edge import "$TFLITE" -o "$work/mnv2_voc.pt"
deeplab-edge bench --weights "$work/mnv2_voc.pt" --data "$VOC" --tflite "$TFLITE" \
  --backends ort-fp32,ov-fp32,ov-bf16,ort-int8,ov-int8,litert-int8,qdq-int8 --calib-folds 3 \
  --tag cpu_int8_voc_samples "${common[@]}"
deeplab-edge calibrate --weights weights/deeplabv3_mnv2_camvid.pt --data "$TRAIN" --num 32 -o "$work/cal"
python bench/experiments/timing_discipline.py "$work/cal" --data "$VAL" -o bench/results/timing_discipline_camvid.json
