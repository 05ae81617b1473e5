#!/usr/bin/env python3
"""Merge the counts.json files that `inv collect --divide` brought home.

Usage: python3 merge.py RESULTS_DIR [CORPUS]
RESULTS_DIR holds one directory per host; with CORPUS, the merged counts are
checked against a count of the whole corpus done here.
"""

import collections
import glob
import json
import os
import re
import sys

results_dir = sys.argv[1]
files = sorted(glob.glob(os.path.join(results_dir, "*", "**", "counts.json"), recursive=True))
if not files:
    sys.exit(f"no counts.json under {results_dir}")
total: collections.Counter = collections.Counter()
shards = set()
for path in files:
    with open(path, encoding="utf-8") as f:
        part = json.load(f)
    shards.add(part["shard"])
    total.update(part["counts"])
    print(f"{part['host']} ({part['hostname']}): shard {part['shard']}, {part['lines']} lines")
print(f"{len(files)} shards merged: {sum(total.values())} words, {len(total)} distinct")
for word, n in total.most_common(10):
    print(f"  {n:6d}  {word}")
if len(sys.argv) > 2:
    with open(sys.argv[2], encoding="utf-8") as f:
        whole = collections.Counter(re.findall(r"[a-z']+", f.read().lower()))
    if whole != total or len(shards) != len(files):
        sys.exit("MISMATCH: the merged counts differ from a local count of the whole corpus")
    print("check: merged counts equal a local count of the whole corpus")
