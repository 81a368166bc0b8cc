"""The request log: one record per answered request, both origins, bounded.

Records are plain dicts (see README.md, "Request log"). seq grows by one per
record and never restarts, not even after clear(), so a test can remember the
last seq it saw and ask for what came after.
"""

import collections
import threading
import time

MAX_RECORDS = 100000


class RequestLog:
    def __init__(self, maxlen=MAX_RECORDS):
        self._lock = threading.Lock()
        self._records = collections.deque(maxlen=maxlen)
        self._seq = 0

    def add(self, method, path, query, status, range_, nbytes, auth, origin, addr, fault):
        """Append a record and return it (see set_bytes)."""
        with self._lock:
            self._seq += 1
            record = {
                "seq": self._seq, "time": time.time(), "method": method, "path": path,
                "query": query, "status": status, "range": range_, "bytes": nbytes,
                "auth": auth, "origin": origin, "addr": addr, "fault": fault,
            }
            self._records.append(record)
            return record

    def set_bytes(self, record, nbytes):
        """Correct the body byte count of a record once the answer is sent.

        Records are added just before an answer leaves, with the bytes it is
        meant to carry, so a client never holds an answer that the log lacks."""
        if record["bytes"] != nbytes:
            with self._lock:
                record["bytes"] = nbytes

    def records(self, since=None):
        with self._lock:
            return [dict(r) for r in self._records if since is None or r["seq"] > since]

    def clear(self):
        with self._lock:
            self._records.clear()
