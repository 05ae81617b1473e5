#!/usr/bin/env bash
# The main job, end to end, on the bundled local test cluster:
#   install corunner and OpenSSH, start 8 local nodes, count the words of a
#   corpus split across them, bring every node's result home, merge them.
# Run as root from anywhere in the checkout:  bash examples/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

.ci/setup                                  # apt openssh-server, .venv with corunner
source .venv/bin/activate

inv lab.up --nodes 8                       # 8 real sshd nodes: 127.0.1.[1-8]
inv hosts                                  # what hosts.yaml selects
inv run --script examples/wordcount/count_shard.py \
        --files examples/wordcount/corpus.txt
rm -rf results/wordcount                   # a fresh place for this run's results
inv collect --divide --dest results/wordcount
python3 examples/wordcount/merge.py results/wordcount examples/wordcount/corpus.txt
