#!/usr/bin/env bash
# Runs an experiment on every host of a Cloud TPU VM pod slice.
#
# Usage:
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh MODULE [FLAGS...]
# e.g.
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh \
#       experiments.tsai2020.main \
#       --config=experiments/tsai2020/configs/cifar10_resnet.py \
#       --workdir=gs://my-bucket/capsjax/tsai2020-cifar10
#
# Runs `python3 -m MODULE FLAGS...` in REPO_DIR on all workers at once with
# `gcloud compute tpus tpu-vm ssh --worker=all`. On a TPU pod JAX finds the
# other hosts by itself: the script sets CAPSJAX_DISTRIBUTED=1 so that
# capsjax.train's maybe_initialize_distributed() calls
# jax.distributed.initialize() with no arguments (TPU auto-detection). Every
# host must see the same --workdir (use a gs:// bucket), because every host
# takes part in checkpoint save and restore; only process 0 writes logs.
#
# Environment:
#   TPU_NAME     the TPU VM (required)
#   ZONE         its zone (required)
#   PROJECT      the Google Cloud project (default: gcloud's configured one)
#   REPO_DIR     the capsjax checkout on the workers (default: ~/capsjax)
#   SETUP=1      first clone REPO_URL into REPO_DIR (or pull it) and
#                `pip install -e` it with jax[tpu] on every worker
#   REPO_URL     what SETUP clones (default: https://github.com/<org>/capsjax,
#                a placeholder: set it to the real repository)
#   PYTHON       interpreter on the workers (default: python3)
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
: "${TPU_NAME:?set TPU_NAME to the TPU VM name (see launch/README.md)}"
: "${ZONE:?set ZONE to the TPU VM zone (see launch/README.md)}"
MODULE=$1; shift
REPO_DIR=${REPO_DIR:-'~/capsjax'}
REPO_URL=${REPO_URL:-https://github.com/<org>/capsjax}
PYTHON=${PYTHON:-python3}

gcloud_ssh() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" \
    ${PROJECT:+--project="$PROJECT"} --worker=all --command="$1"
}

if [[ ${SETUP:-0} == 1 ]]; then
  gcloud_ssh "set -e
    if [ -d $REPO_DIR/.git ]; then git -C $REPO_DIR pull --ff-only;
    else git clone $(printf '%q' "$REPO_URL") $REPO_DIR; fi
    $PYTHON -m pip install -U 'jax[tpu]' -e $REPO_DIR"
fi

# Quote the flags once for the remote shell.
remote_args=$(printf ' %q' "$@")
gcloud_ssh "cd $REPO_DIR && CAPSJAX_DISTRIBUTED=1 $PYTHON -m $(printf '%q' "$MODULE")$remote_args"
