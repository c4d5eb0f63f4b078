"""A deterministic Python workload for ci/alloc-programs.sh: JSON, regular expressions,
threads, and many small objects. Run with PYTHONMALLOC=malloc so that every object goes
through the process malloc. Prints the same lines on every run."""

import hashlib
import json
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor

rng = random.Random(20261203)
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def document(i):
    r = random.Random(i)
    return {
        "id": i,
        "name": " ".join(r.choice(WORDS) for _ in range(r.randint(1, 6))),
        "tags": sorted({r.choice(WORDS) for _ in range(r.randint(0, 5))}),
        "values": [r.random() for _ in range(r.randint(0, 20))],
        "nested": {"depth": [{"k": r.randint(0, 1000), "s": "x" * r.randint(0, 300)} for _ in range(r.randint(0, 8))]},
    }


# JSON: build, encode, decode, compare, digest.
docs = [document(i) for i in range(4000)]
text = json.dumps(docs, sort_keys=True)
back = json.loads(text)
assert back == docs
print("json", len(text), hashlib.sha256(text.encode()).hexdigest())

# Regular expressions over generated text.
lines = []
for i in range(20000):
    lines.append("%s-%d user%d@host%d.example %s" % (rng.choice(WORDS), i, rng.randint(0, 999), i % 37, "y" * rng.randint(0, 80)))
corpus = "\n".join(lines)
emails = re.findall(r"user(\d+)@host(\d+)\.example", corpus)
swapped = re.sub(r"(\w+)-(\d+)", lambda m: m.group(2) + ":" + m.group(1).upper(), corpus)
print("regex", len(emails), sum(int(a) + int(b) for a, b in emails), hashlib.sha256(swapped.encode()).hexdigest())


# Threads: each builds and tears down its own structures; one shared dict under a lock, so
# objects allocated by one thread are freed by others.
shared = {}
lock = threading.Lock()


def task(n):
    r = random.Random(n)
    local = {}
    for j in range(3000):
        key = "%d:%d" % (n, r.randint(0, 500))
        local[key] = [r.random() for _ in range(r.randint(1, 10))]
        if j % 7 == 0:
            with lock:
                old = shared.pop(r.randint(0, 200), None)
                shared[r.randint(0, 200)] = local.pop(key)
                del old
    blob = json.dumps(sorted(local.items()))
    return hashlib.sha256(blob.encode()).hexdigest()


with ThreadPoolExecutor(max_workers=8) as pool:
    digests = list(pool.map(task, range(64)))
print("threads", hashlib.sha256("".join(digests).encode()).hexdigest(), len(shared) <= 201)

# Many small objects: build, sort, drop.
objs = [(rng.random(), str(i) * (i % 13), (i, i + 1)) for i in range(300000)]
objs.sort()
print("objects", len(objs), objs[0][1], objs[-1][1][:20])
del objs
print("done")
