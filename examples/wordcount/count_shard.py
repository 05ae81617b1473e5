#!/usr/bin/env python3
"""Count the words of this node's shard of corpus.txt; write counts.json.

corunner runs this in the run's directory on every node, with corpus.txt
uploaded beside it (--files) and these variables set by the executor:
CORUNNER_NODE_INDEX (0-based) and CORUNNER_NODE_COUNT.
"""

import collections
import json
import os
import re
import socket

index = int(os.environ["CORUNNER_NODE_INDEX"])
count = int(os.environ["CORUNNER_NODE_COUNT"])

with open("corpus.txt", encoding="utf-8") as f:
    lines = f.read().splitlines()
shard = lines[index::count]  # every count-th line, starting at this node's index

words = collections.Counter(w for line in shard for w in re.findall(r"[a-z']+", line.lower()))
result = {
    "host": os.environ.get("CORUNNER_HOST"),
    "hostname": socket.gethostname(),
    "shard": index,
    "lines": len(shard),
    "counts": dict(words),
}
with open("counts.json", "w", encoding="utf-8") as f:
    json.dump(result, f)
print(
    f"{socket.gethostname()}: shard {index}/{count}: {len(shard)} lines, {sum(words.values())} words"
)
