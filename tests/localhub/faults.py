"""Fault injection rules (see README.md, "Faults", for the format and examples).

A rule matches a request by method, a regex searched in the raw path, and the
origin (api or cdn). Matching rules are tried in list order; the first one that
fires decides the request. A rule fires with probability `rate` and is spent
after firing `count` times. A ratelimit rule counts every matching request in
its bucket and fires only for requests over the limit; until then it only adds
RateLimit headers and lets later rules decide.

Actions that answer instead of the application (status, expire, ratelimit)
leave the request without side effects. stall delays the request before the
application sees it. reset, truncate, bandwidth and corrupt act on the bytes of
the real answer, after the application ran (a commit behind a reset is made).
wan is stall and bandwidth together (a far CDN): it delays each request by
`seconds`, then paces its body at `bytes_per_sec`. Each connection has its own
thread, so the cap is per connection, like one TCP stream each.
"""

import hashlib
import json
import math
import random
import re
import threading
import time

from httpcore import Response

ACTIONS = ("status", "reset", "truncate", "stall", "bandwidth", "corrupt", "expire", "ratelimit",
           "wan")
ORIGINS = ("api", "cdn", "any")


class Rule:
    def __init__(self, spec):
        if not isinstance(spec, dict):
            raise ValueError("a rule must be a JSON object")
        self.spec = dict(spec)
        self.action = spec.get("action")
        if self.action not in ACTIONS:
            raise ValueError("unknown action %r (one of %s)" % (self.action, ", ".join(ACTIONS)))
        method = spec.get("method")
        self.method = method.upper() if method else None
        try:
            self.path = re.compile(spec["path"]) if spec.get("path") else None
        except re.error as e:
            raise ValueError("bad path regex %r: %s" % (spec.get("path"), e)) from None
        self.origin = spec.get("origin") or "any"
        if self.origin not in ORIGINS:
            raise ValueError("origin must be api, cdn or any")
        self.rate = float(spec.get("rate", 1))
        self.count = spec.get("count")
        if self.count is not None:
            self.count = int(self.count)
        self.fired = 0
        self.buckets = {}
        if self.action == "status":
            self.status = int(spec.get("status", 500))
            if not 100 <= self.status <= 599:
                raise ValueError("status must be an HTTP status")
            if not isinstance(spec.get("headers", {}), dict):
                raise ValueError("headers must be an object")
        elif self.action == "stall":
            self.seconds = float(spec.get("seconds", 5))
        elif self.action == "ratelimit":
            self.limit = int(spec.get("limit", 10))
            self.window = float(spec.get("window", 60))
            if self.window <= 0 or self.limit < 0:
                raise ValueError("ratelimit needs limit >= 0 and window > 0")
        elif self.action == "bandwidth":
            if int(spec.get("bytes_per_sec", 0)) <= 0:
                raise ValueError("bandwidth needs bytes_per_sec > 0")
        elif self.action == "wan":
            self.seconds = float(spec.get("seconds", 0.05))
            if self.seconds < 0 or int(spec.get("bytes_per_sec", 0)) <= 0:
                raise ValueError("wan needs seconds >= 0 and bytes_per_sec > 0")
        for key in ("after_bytes",):
            if spec.get(key) is not None and int(spec[key]) < 0:
                raise ValueError("%s must be >= 0" % key)

    @property
    def spent(self):
        return self.count is not None and self.fired >= self.count

    def matches(self, method, path, origin):
        return ((self.method is None or self.method == method)
                and (self.origin == "any" or self.origin == origin)
                and (self.path is None or self.path.search(path) is not None))

    def account(self, key, path, now):
        """Count a request in its bucket: (over the limit?, RateLimit headers)."""
        start, n = self.buckets.get(key, (now, 0))
        if now - start >= self.window:
            start, n = now, 0
        n += 1
        self.buckets[key] = (start, n)
        reset = max(1, int(math.ceil(start + self.window - now)))
        bucket = "resolvers" if "/resolve/" in path else "api"
        headers = [("RateLimit", '"%s";r=%d;t=%d' % (bucket, max(0, self.limit - n), reset)),
                   ("RateLimit-Policy", '"fixed window";"%s";q=%d;w=%d'
                    % (bucket, self.limit, int(self.window)))]
        return n > self.limit, headers, reset

    def describe(self):
        d = dict(self.spec)
        d["fired"] = self.fired
        d["spent"] = self.spent
        return d


class Decision:
    """What a fired rule does to one request."""

    __slots__ = ("action", "params", "response", "extra_headers", "seconds")

    def __init__(self, action, params, response=None, extra_headers=(), seconds=0):
        self.action = action
        self.params = params
        self.response = response
        self.extra_headers = list(extra_headers)
        self.seconds = seconds


def _json_error(status, message, code=None, headers=()):
    hdrs = [("Content-Type", "application/json; charset=utf-8"), ("X-Error-Message", message)]
    if code:
        hdrs.append(("X-Error-Code", code))
    hdrs.extend(headers)
    return Response(status, hdrs, json.dumps({"error": message}).encode())


def expired_response():
    body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
            b'<Message>Request has expired</Message></Error>')
    return Response(403, [("Content-Type", "application/xml")], body)


class Faults:
    """The current rule list; thread-safe."""

    def __init__(self, specs=()):
        self._lock = threading.Lock()
        self._rules = []
        self._rng = random.Random()
        self.active = False
        if specs:
            self.set(specs)

    @staticmethod
    def parse(data):
        """Rules from JSON text or an already decoded value (list or {"rules": [...]})."""
        if isinstance(data, (bytes, str)):
            data = json.loads(data or "[]")
        if isinstance(data, dict) and "rules" in data:
            data = data["rules"]
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise ValueError("faults must be a JSON list of rules")
        return [Rule(spec) for spec in data]

    def set(self, specs):
        rules = self.parse(specs)
        with self._lock:
            self._rules = rules
            self.active = bool(rules)

    def clear(self):
        self.set([])

    def describe(self):
        with self._lock:
            return [r.describe() for r in self._rules]

    def decide(self, req, origin):
        """The Decision for a request, or None to serve it normally."""
        now = time.monotonic()
        extra = []
        with self._lock:
            for rule in self._rules:
                if rule.spent or not rule.matches(req.method, req.path, origin):
                    continue
                if rule.action == "ratelimit":
                    auth = req.headers.get("authorization")
                    key = hashlib.sha1(auth.encode()).hexdigest() if auth else "anon"
                    over, headers, reset = rule.account(key, req.path, now)
                    if not over:
                        extra.extend(headers)
                        continue
                    if rule.rate < 1 and self._rng.random() >= rule.rate:
                        extra.extend(headers)
                        continue
                    rule.fired += 1
                    return self._ratelimited(rule, headers, reset, req)
                if rule.rate < 1 and self._rng.random() >= rule.rate:
                    continue
                rule.fired += 1
                return self._decision(rule, extra)
        return Decision(None, {}, extra_headers=extra) if extra else None

    @staticmethod
    def _ratelimited(rule, headers, reset, req):
        bucket = "resolvers" if "/resolve/" in req.path else "api"
        headers = [h for h in headers if h[0] != "RateLimit"]
        headers += [("RateLimit", '"%s";r=0;t=%d' % (bucket, reset)), ("Retry-After", str(reset))]
        resp = _json_error(429, "You have exceeded our request rate limit (%s bucket). Retry later."
                           % bucket, headers=headers)
        return Decision("ratelimit", rule.spec, resp)

    @staticmethod
    def _decision(rule, extra):
        spec = rule.spec
        if rule.action == "status":
            resp = _json_error(rule.status, spec.get("message", "Injected fault (%d)" % rule.status),
                               spec.get("error_code"), list(spec.get("headers", {}).items()))
            if "body" in spec:
                resp.body = str(spec["body"]).encode("utf-8")
            return Decision("status", spec, resp)
        if rule.action == "expire":
            return Decision("expire", spec, expired_response())
        if rule.action in ("stall", "wan"):
            return Decision(rule.action, spec, extra_headers=extra, seconds=rule.seconds)
        return Decision(rule.action, spec, extra_headers=extra)
