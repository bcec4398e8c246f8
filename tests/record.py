"""A check for the tests: appends one JSON line per run to the file named by argv[1]."""

import json
import os
import sys
import time

log, files = sys.argv[1], sys.argv[2:]
entry = {
    "t": time.time(),
    "pid": os.getpid(),
    "pgid": os.getpgid(0),
    "sid": os.getsid(0),
    "cwd": os.getcwd(),
    "files": files,
    "env": sorted(os.environ),
}
with open(log, "a", encoding="utf-8", errors="surrogateescape") as f:
    f.write(json.dumps(entry) + "\n")
