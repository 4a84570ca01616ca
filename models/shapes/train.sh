#!/bin/sh
# Reproduces the shapes world's shipped models (models/shapes/{clip,vgg16,xception,biggan}) and their
# quality figures from scratch on the CPU, with fixed seeds. Run from the repository root:
#
#   sh models/shapes/train.sh [WORK_DIR]
#
# WORK_DIR (default: target/shapes-work) receives the datasets and the full training folders
# (with their checkpoints, so that an interrupted script continues where it stopped when run
# again); the model folders are then copied to models/shapes/ without checkpoint.safetensors
# (only --resume needs it). Each shipped folder gets command.txt (how it was trained) and
# eval.json (its quality on a fresh dataset). About 2.5 hours on a 2-core machine for the
# captioners and the CLIP, and about 3.5 more for the BigGAN (27 epochs).
set -eu
WORK=${1:-target/shapes-work}
BIN=${ROUNDTRIP:-target/release/roundtrip}
[ -n "${ROUNDTRIP:-}" ] || cargo build --release
mkdir -p "$WORK"
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}

# Training data (seed 2) and a fresh evaluation set rendered with a seed never used in training.
[ -f "$WORK/train/shapes.json" ] || "$BIN" shapes dataset --out "$WORK/train" --images 6000 --seed 2
[ -f "$WORK/eval/shapes.json" ] || "$BIN" shapes dataset --out "$WORK/eval" --images 1000 --seed 20261128

resume() { if [ -f "$1/checkpoint.safetensors" ]; then echo --resume; fi; }

# The two captioners: encoders trained end to end with the decoder, on each image's first
# caption (its complete description), so that they describe scenes in one consistent form.
cap_args="--train-encoder --first-caption-only --embed 128 --hidden 128 --dropout 0.3 --epochs 40 --patience 4 --seed 1"
for k in vgg16 xception; do
  # shellcheck disable=SC2086
  "$BIN" train --encoder "$k" --dataset "$WORK/train" --out "$WORK/$k" $cap_args $(resume "$WORK/$k")
  echo "roundtrip train --encoder $k --dataset TRAIN --out models/shapes/$k $cap_args" > "$WORK/$k/command.txt"
done

# The CLIP: contrastive training with mild crops (positions carry meaning), pixel noise and blur
# (a CLIP that noise and blur cannot fool guides generation towards recognisable shapes).
clip_args="--seed 1 --epochs 40 --crop-min 0.85 --noise 0.1 --blur 0.3"
# shellcheck disable=SC2086
"$BIN" train-clip --dataset "$WORK/train" --out "$WORK/clip" $clip_args $(resume "$WORK/clip")
echo "roundtrip train-clip --dataset TRAIN --out models/shapes/clip $clip_args" > "$WORK/clip/command.txt"

# The class-conditional BigGAN-deep: 64 px, the 40 (shape, colour) classes, hinge loss, EMA
# generator, one D step per G step at lr 2e-4 for both (BigGAN's 2 D steps with lr 1e-4 / 4e-4
# drew no shapes after 1,000 G steps), DiffAugment's translation only (its colour changes would
# blur the classes, half of which is the colour, and its cutout erases shapes), and coordinate
# channels beside D's input (its head sums over positions; a position is part of a phrase).
# About 3 s per step on 2 otherwise idle cores (2026-11-30), 150 steps per epoch: 7.5 minutes an
# epoch; rerunning the script resumes it. The shipped model is the snapshot after GAN_EPOCHS
# epochs of a training still under way (docs/shapes-world.md): raising GAN_EPOCHS continues the
# same training from its checkpoint (nothing in a step depends on the number of epochs).
GAN_EPOCHS=${GAN_EPOCHS:-27}
gan_args="--image-size 64 --batch-size 32 --g-ch 16 --d-ch 32 --d-depth 1 --z-dim 64 --epochs $GAN_EPOCHS --seed 2 --d-steps 1 --lr-g 2e-4 --lr-d 2e-4 --diffaug translation --d-coords"
# shellcheck disable=SC2086
"$BIN" train-gan --dataset "$WORK/train" --out "$WORK/biggan" $gan_args $(resume "$WORK/biggan")
echo "roundtrip train-gan --dataset TRAIN --out models/shapes/biggan $gan_args" > "$WORK/biggan/command.txt"

# Quality on the fresh set's test split: corpus BLEU-1..4 against its five references, and
# retrieval over a 100-image gallery.
for k in vgg16 xception; do
  "$BIN" eval --captioner "$WORK/$k" --dataset "$WORK/eval" --json > "$WORK/$k/eval.json"
done
"$BIN" eval-clip --clip "$WORK/clip" --dataset "$WORK/eval" --limit 100 --json > "$WORK/clip/eval.json"
"$BIN" eval-gan --biggan "$WORK/biggan" --clip "$WORK/clip" \
  --captioners "vgg16=$WORK/vgg16,xception=$WORK/xception" --json > "$WORK/biggan/eval.json"

for k in vgg16 xception clip biggan; do
  dest="models/shapes/$k"
  rm -rf "$dest"
  mkdir -p "$dest"
  for f in "$WORK/$k"/*; do
    case "$(basename "$f")" in checkpoint.safetensors) ;; *) cp -r "$f" "$dest/" ;; esac
  done
done
echo "TRAIN = $WORK/train (roundtrip shapes dataset --images 6000 --seed 2)" > models/shapes/DATASETS.txt
echo "EVAL = $WORK/eval (roundtrip shapes dataset --images 1000 --seed 20261128)" >> models/shapes/DATASETS.txt
