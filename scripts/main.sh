#!/usr/bin/env bash
# The main job from a fresh machine: sets up .venv, torch and the build, then runs
# fastallreduce's allreduce bandwidth benchmark against torch.distributed gloo on 2 local ranks.
# Extra arguments go to `python -m fastallreduce bench allreduce`.
source "$(dirname "$0")/env.sh"
export GLOO_SOCKET_IFNAME=lo
python -m fastallreduce bench allreduce "$@"
