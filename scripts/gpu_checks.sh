#!/usr/bin/env bash
# The GPU checks of issue 8, in one run that fits a short loan of a GPU machine (about 9
# minutes on an H100/H200), most important first; each step has its own time limit and the
# next one runs whatever the last one gave.
#   bash scripts/gpu_checks.sh [OUT]            (default OUT: $OUT, else gpu_checks)
# 1. the GPU's name (nvidia-smi, torch);
# 2. the GPU tests: engines, the pipeline's GPU data path, the predictor (pytest -m gpu);
# 3. end to end on a 1080p H.264 clip (300 synthetic frames, 3 instruments): ResNet-101 at
#    1024x1280, torch fp16, channels_last, CUDA graphs, batch 8, random weights (speed needs no
#    training); bench.json's end_to_end_vs_model is the target (>= 0.9);
# 4. the torch engine alone at that size, batches 1 and 8 (bench_engines.py).
# On a machine without surgseg installed, put the repository on PYTHONPATH first (and the
# wheels of ../shared/gpu/wheels.sh where its dependencies are missing).
set -u
out=${1:-${OUT:-gpu_checks}}
mkdir -p "$out"
py=${PYTHON:-python3}
step() {  # step NAME SECONDS COMMAND...: run it, keep its output in $out/NAME.txt
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s)"
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  local rc=$?
  echo "   exit $rc in $((SECONDS - start)) s; last lines:"
  tail -n 4 "$out/$name.txt" | sed 's/^/   /'
}

step gpu 30 bash -c "nvidia-smi -L; $py -c 'import torch; print(torch.cuda.get_device_name())'"
step pytest_gpu 200 "$py" -m pytest -q -p no:cacheprovider -m gpu tests/test_engines.py \
  tests/test_pipeline.py tests/test_predictor.py
clip="$out/clip_1920x1080"
step clip 120 "$py" -c "from surgseg.synthetic import write_clip
write_clip('$clip', num_frames=300, width=1920, height=1080, fps=30, seed=1, num_instruments=3)"
step end_to_end 240 "$py" -m surgseg.apps.bench "output_dir=$out/end_to_end" \
  "input=$clip/video.mp4" model=resnet101 task=parts "input_size=[1024,1280]" device=cuda \
  engine.precision=fp16 engine.channels_last=true engine.cuda_graphs=true batch_size=8 \
  max_frames=null
step engines 150 "$py" scripts/bench_engines.py --engines torch --depths 101 \
  --sizes 1024x1280 --batches 1 8 --out "$out/engines"
