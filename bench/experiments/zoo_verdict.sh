#!/usr/bin/env bash
# The CamVid zoo's verdict (issue 28), by hand, from a clean tree at the repository root:
#   1. each model's CRF parameters chosen on 16 frames of CamVid *train* (`crf tune`; never on val), on a grid
#      below DeepLab-v2's VOC one (w1 2-4, theta_alpha 10-40, theta_beta 2-3: 18 points): on the committed CamVid model every
#      best value of the VOC grid (w1 3-5, theta_alpha 30-90, theta_beta 3-5) was its smallest,
#   2. every model x {torch-fp32, ort-fp32, ort-int8, qdq-int8} x {no CRF, CRF} x {single scale,
#      MSC 0.5-1.75 + flip} on the 101 CamVid val frames, INT8 calibrated on CamVid train (held out),
#   3. the seed's claims read off that result (bench/experiments/seed_claims.py).
# Expect about an hour on 2 cores (an estimate from its parts, not yet timed whole). Results: bench/results/crf_tune_<model>_camvid_train.json,
# bench/results/bench_zoo_camvid_val.{json,csv,png}, bench/results/seed_claims_camvid_val.{json,md}.
set -euo pipefail
TRAIN=${TRAIN:-../shared/data/camvid_train}
VAL=${VAL:-../shared/data/camvid_val}
models=(weights/deeplabv3_mnv2_camvid.pt weights/deeplab_largefov_mnv2_camvid.pt weights/deeplabv2_mnv2_camvid.pt
        weights/deeplabv3_rates_mnv2_camvid.pt weights/deeplabv3plus_mnv2_camvid.pt)
weights=() crf=()
for m in "${models[@]}"; do
  name=$(basename "$m" .pt)
  tuned=bench/results/crf_tune_${name}_camvid_train.json
  [ -f "$tuned" ] || deeplab-edge crf tune --weights "$m" --data "$TRAIN" --split train --sample 16 \
    --w1 2,3,4 --theta-alpha 10,20,40 --theta-beta 2,3 -o "$tuned"
  weights+=(--weights "$m") crf+=(--crf-params "$tuned")
done
deeplab-edge bench "${weights[@]}" "${crf[@]}" --data "$VAL" --backends torch-fp32,ort-fp32,ort-int8,qdq-int8 \
  --crf none,torch --scales 1 --scales 0.5,0.75,1,1.25,1.5,1.75+flip --calib-data "$TRAIN" --calib-num 64 \
  --iters 20 --warmup 3 --threads 2 --tag zoo_camvid_val -o bench/results
python bench/experiments/seed_claims.py bench/results/bench_zoo_camvid_val.json -o bench/results/seed_claims_camvid_val
