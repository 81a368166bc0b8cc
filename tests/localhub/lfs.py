"""LFS storage traffic: signed URLs, the batch API, uploads, and the CDN origin.

The API origin answers the LFS batch call and the multipart completion; the
data itself moves over the CDN origin (a second listener on another loopback
address), which plays S3/CloudFront: it needs no Authorization, only a URL
signed with the server secret that has not expired.

URLs (all signed: expires=<unix time>&sig=<hmac-sha256 hex>):
    GET|HEAD cdn /lfs/<sha256>                    download (Range, sendfile)
    PUT      cdn /upload/<sha256>?size=N          basic upload, checked
    PUT      cdn /upload/<upload id>/<part>       one part of a multipart upload
    POST     api /api/complete_multipart?uploadId=<id>   assemble the parts

Uploads stream to a temp file while hashing and are renamed into the LFS store
only when sha256 and size match, so a failed upload stores nothing.
"""

import hashlib
import hmac
import json
import os
import re
import shutil
import time
from urllib.parse import urlencode

import gitobj
from httpcore import Response, file_response
from store import HubError, read_json, write_json

LFS_JSON = "application/vnd.git-lfs+json"


class Signer:
    """HMAC-signs a path and its query parameters with an expiry time."""

    def __init__(self, secret, ttl=3600):
        self.secret = secret
        self.ttl = ttl
        self._good = {}  # (path, query) -> expires, for URLs already verified


    def _mac(self, path, params):
        canon = urlencode(sorted((k, str(v)) for k, v in params.items() if k != "sig"))
        return hmac.new(self.secret, ("%s?%s" % (path, canon)).encode("utf-8"), hashlib.sha256).hexdigest()

    def query(self, path, params=None, ttl=None):
        params = dict(params or {})
        params["expires"] = int(time.time()) + int(self.ttl if ttl is None else ttl)
        params["sig"] = self._mac(path, params)
        return urlencode(params)

    def check(self, req):
        """None if the request's signature is good and fresh, else 'signature' or 'expired'."""
        key = (req.path, req.query)
        expires = self._good.get(key)
        if expires is None:
            params = {k: v[-1] for k, v in req.params.items()}
            if not hmac.compare_digest(params.get("sig", ""), self._mac(req.path, params)):
                return "signature"
            try:
                expires = int(params.get("expires", "0"))
            except ValueError:
                return "signature"
            if len(self._good) > 10000:
                self._good.clear()
            self._good[key] = expires
        return "expired" if expires < time.time() else None


def s3_error(status, code, message):
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code><Message>%s</Message></Error>'
            % (code, message)).encode("utf-8")
    return Response(status, [("Content-Type", "application/xml")], body)


def forbidden(reason):
    if reason == "expired":
        return s3_error(403, "AccessDenied", "Request has expired")
    return s3_error(403, "AccessDenied", "The request signature we calculated does not match the "
                    "signature you provided")


def lfs_json(obj, status=200):
    return Response(status, [("Content-Type", LFS_JSON)], json.dumps(obj).encode())


class LfsService:
    """Everything about LFS objects except routing and auth (done by the callers)."""

    def __init__(self, store, signer, chunk_size=None):
        self.store = store
        self.signer = signer
        self.chunk_size = chunk_size
        self.api_url = None
        self.cdn_url = None
        self.uploads = os.path.join(store.root, "uploads")
        os.makedirs(self.uploads, exist_ok=True)

    # ---- URLs ------------------------------------------------------------

    def download_url(self, oid):
        path = "/lfs/%s" % oid
        return "%s%s?%s" % (self.cdn_url, path, self.signer.query(path))

    def _upload_url(self, path, params=None, ttl=86400):
        return "%s%s?%s" % (self.cdn_url, path, self.signer.query(path, params, ttl))

    # ---- batch API (API origin) --------------------------------------------

    def batch(self, repo, body):
        """Answer a batch request whose caller is already authorised."""
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            raise HubError(400, "Invalid JSON in LFS batch request") from None
        if not isinstance(req, dict):
            raise HubError(400, "Invalid LFS batch request")
        operation = req.get("operation")
        if operation not in ("upload", "download"):
            raise HubError(400, "operation must be upload or download")
        algo = req.get("hash_algo") or "sha256"
        if algo not in ("sha256", "sha_256"):
            raise HubError(409, "Unsupported hash algorithm: %s" % algo)
        transfers = req.get("transfers") or ["basic"]
        multipart = self.chunk_size is not None and "multipart" in transfers
        objects = req.get("objects")
        if not isinstance(objects, list):
            raise HubError(400, "objects must be a list")
        out = []
        used_multipart = False
        for obj in objects:
            oid = obj.get("oid") if isinstance(obj, dict) else None
            size = obj.get("size") if isinstance(obj, dict) else None
            if not gitobj.is_sha256(oid) or not isinstance(size, int) or size < 0:
                out.append({"oid": oid, "size": size, "error": {"code": 422, "message": "Invalid object"}})
                continue
            stored = self.store.lfs.size(oid)
            entry = {"oid": oid, "size": size, "authenticated": True}
            if operation == "download":
                if stored is None:
                    entry["error"] = {"code": 404, "message": "Object does not exist"}
                else:
                    entry["size"] = stored
                    entry["actions"] = {"download": {"href": self.download_url(oid), "header": {},
                                                     "expires_in": self.signer.ttl}}
            elif stored is None:
                if multipart and size > self.chunk_size:
                    entry["actions"] = {"upload": self._multipart_action(oid, size)}
                    used_multipart = True
                else:
                    entry["actions"] = {"upload": {
                        "href": self._upload_url("/upload/%s" % oid, {"size": size}),
                        "header": {}, "expires_in": 86400}}
                entry["actions"]["verify"] = {
                    "href": "%s/%s%s.git/info/lfs/objects/verify" % (self.api_url, repo.url_prefix, repo.id),
                    "header": {}}
            out.append(entry)
        return lfs_json({"transfer": "multipart" if used_multipart else "basic", "objects": out,
                         "hash_algo": "sha256"})

    def _multipart_action(self, oid, size):
        upload_id = os.urandom(16).hex()
        chunk = self.chunk_size
        nparts = (size + chunk - 1) // chunk
        write_json(os.path.join(self.uploads, upload_id, "session.json"),
                   {"oid": oid, "size": size, "chunk_size": chunk, "parts": nparts,
                    "created": int(time.time())})
        header = {"chunk_size": str(chunk)}
        for n in range(1, nparts + 1):
            header["%05d" % n] = self._upload_url("/upload/%s/%d" % (upload_id, n))
        path = "/api/complete_multipart"
        href = "%s%s?%s" % (self.api_url, path, self.signer.query(path, {"uploadId": upload_id}, 86400))
        return {"href": href, "header": header, "expires_in": 86400}

    def verify(self, body):
        try:
            req = json.loads(body or b"{}")
            oid, size = req["oid"], req["size"]
        except (ValueError, KeyError, TypeError):
            raise HubError(400, "verify needs {oid, size}") from None
        stored = self.store.lfs.size(oid) if isinstance(oid, str) else None
        if stored is None:
            raise HubError(404, "Object %s not found" % oid)
        if stored != size:
            raise HubError(422, "Object %s has size %d, not %s" % (oid, stored, size))
        return lfs_json({"message": "ok"})

    def complete(self, req):
        """POST /api/complete_multipart: check every part's ETag, assemble, verify."""
        bad = self.signer.check(req)
        if bad:
            return forbidden(bad)
        upload_id = req.param("uploadId", "")
        sdir = os.path.join(self.uploads, upload_id)
        session = read_json(os.path.join(sdir, "session.json")) if re.match(r"^[0-9a-f]{32}$", upload_id) else None
        if session is None:
            return s3_error(404, "NoSuchUpload", "The specified upload does not exist")
        try:
            body = json.loads(req.read_all(16 << 20) or b"{}")
            parts = sorted(body["parts"], key=lambda p: int(p["partNumber"]))
        except (ValueError, KeyError, TypeError):
            return s3_error(400, "MalformedXML", "Completion body must be {oid, parts[{partNumber, etag}]}")
        if body.get("oid") != session["oid"]:
            return s3_error(400, "InvalidRequest", "oid does not match this upload")
        if [int(p["partNumber"]) for p in parts] != list(range(1, session["parts"] + 1)):
            return s3_error(400, "InvalidPartOrder", "Parts 1..%d must each be listed once" % session["parts"])
        for p in parts:
            n = int(p["partNumber"])
            try:
                with open(os.path.join(sdir, "%05d.etag" % n)) as f:
                    stored = f.read().strip()
            except FileNotFoundError:
                return s3_error(400, "InvalidPart", "Part %d was not uploaded" % n)
            if str(p.get("etag", "")).strip().strip('"') != stored:
                return s3_error(400, "InvalidPart", "ETag of part %d does not match" % n)

        def chunks():
            for n in range(1, session["parts"] + 1):
                with open(os.path.join(sdir, "%05d" % n), "rb") as f:
                    while True:
                        data = f.read(1 << 20)
                        if not data:
                            break
                        yield data
        digest, size, tmp = self.store.lfs.receive(chunks())
        if digest != session["oid"] or size != session["size"]:
            os.unlink(tmp)
            return s3_error(400, "BadDigest", "Assembled object has sha256 %s and size %d, expected %s "
                            "and %d" % (digest, size, session["oid"], session["size"]))
        self.store.lfs.install(tmp, digest)
        shutil.rmtree(sdir, ignore_errors=True)
        return lfs_json({"oid": digest, "size": size})

    # ---- storage PUTs (CDN origin) -----------------------------------------

    def put_object(self, req, oid):
        try:
            size = int(req.param("size", ""))
        except ValueError:
            return s3_error(400, "InvalidArgument", "size is required")
        if req.content_length is not None and req.content_length != size:
            return s3_error(400, "IncompleteBody", "Content-Length %d does not match the announced size %d"
                            % (req.content_length, size))
        digest, got, tmp = self.store.lfs.receive(req.iter_body())
        if digest != oid or got != size:
            os.unlink(tmp)
            return s3_error(400, "BadDigest", "The sha256 (%s) or size (%d) of the body does not match "
                            "the object %s of size %d" % (digest, got, oid, size))
        self.store.lfs.install(tmp, oid)
        return Response(200, [("ETag", '"%s"' % oid)], b"")

    def put_part(self, req, upload_id, part):
        sdir = os.path.join(self.uploads, upload_id)
        session = read_json(os.path.join(sdir, "session.json"))
        if session is None:
            return s3_error(404, "NoSuchUpload", "The specified upload does not exist")
        if not 1 <= part <= session["parts"]:
            return s3_error(400, "InvalidArgument", "Part number must be 1..%d" % session["parts"])
        chunk = session["chunk_size"]
        expect = min(chunk, session["size"] - (part - 1) * chunk)
        if req.content_length is not None and req.content_length != expect:
            return s3_error(400, "IncompleteBody", "Part %d must be %d bytes, not %d"
                            % (part, expect, req.content_length))
        md5 = hashlib.md5()
        tmp = os.path.join(sdir, "%05d.tmp.%s" % (part, os.urandom(4).hex()))
        got = 0
        try:
            with open(tmp, "wb") as f:
                for data in req.iter_body():
                    md5.update(data)
                    f.write(data)
                    got += len(data)
        except BaseException:
            os.unlink(tmp)
            raise
        if got != expect:
            os.unlink(tmp)
            return s3_error(400, "IncompleteBody", "Part %d must be %d bytes, got %d" % (part, expect, got))
        etag = md5.hexdigest()
        os.replace(tmp, os.path.join(sdir, "%05d" % part))
        with open(os.path.join(sdir, "%05d.etag" % part), "w") as f:
            f.write(etag)
        return Response(200, [("ETag", '"%s"' % etag)], b"")


class CdnApp:
    """The CDN/storage origin: signed downloads and uploads, no Authorization."""

    def __init__(self, lfs):
        self.lfs = lfs

    def handle(self, req):
        parts = req.path.split("/")
        bad = self.lfs.signer.check(req)
        if len(parts) == 3 and parts[1] == "lfs" and gitobj.is_sha256(parts[2]):
            if req.method not in ("GET", "HEAD"):
                return s3_error(405, "MethodNotAllowed", "Use GET or HEAD")
            if bad:
                return forbidden(bad)
            return self.download(req, parts[2])
        if len(parts) in (3, 4) and parts[1] == "upload":
            if req.method != "PUT":
                return s3_error(405, "MethodNotAllowed", "Use PUT")
            if bad:
                return forbidden(bad)
            if len(parts) == 3 and gitobj.is_sha256(parts[2]):
                return self.lfs.put_object(req, parts[2])
            if len(parts) == 4 and re.match(r"^[0-9a-f]{32}$", parts[2]) and parts[3].isdigit():
                return self.lfs.put_part(req, parts[2], int(parts[3]))
        return s3_error(404, "NoSuchKey", "The specified key does not exist.")

    def download(self, req, oid):
        path = self.lfs.store.lfs.path(oid)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return s3_error(404, "NoSuchKey", "The specified key does not exist.")
        etag = '"%s"' % oid
        headers = [("Content-Type", "application/octet-stream"), ("ETag", etag),
                   ("Accept-Ranges", "bytes"), ("Cache-Control", "public, max-age=31536000, immutable")]
        if etag in req.headers.get("if-none-match", ""):
            return Response(304, headers, b"")
        return file_response(headers, path, 0, size, req.headers.get("range"))

