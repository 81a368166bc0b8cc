// Conformance of the local Hub server (tests/localhub) with the official
// JavaScript client, @huggingface/hub (version pinned in package.json).
//
// Every check drives the real client against the server given in HUB_URL and
// compares what comes back with what the Hugging Face Hub answers (facts from
// the project's Hub API notes, hub-api.md §14, and from the client's own spec
// files under node_modules/@huggingface/hub/src/lib/*.spec.ts).  Output is
// TAP (plan first, one test point per check, diagnostics as "# ..." lines), so
// automake's tap-driver.sh can run it; the exit status is 1 if any check failed.
//
// Environment:
//   HUB_URL             base URL of a local Hub started with --seed (required)
//   HUB_URL_SMALL       base URL of a second local Hub started with a small
//                       --lfs-chunk-size and --page-size (optional: its checks
//                       are skipped when unset)
//   HUB_SMALL_CHUNK_SIZE  the --lfs-chunk-size of HUB_URL_SMALL (default 5242880)
//   HUB_SMALL_PAGE_SIZE   the --page-size of HUB_URL_SMALL (default 3)
//   HUB_TOKEN           write token of the main user (default: seeded alice)
//   HUB_TOKEN_READ      read token of the same user (default: seeded alice)
//   HUB_TOKEN_OTHER     write token of a user outside HUB_ORG (default: seeded bob)
//   HUB_ORG             an org the main user belongs to (default acme-research)
//   HUB_PRIVATE_REPO    private model readable by the main user only (default
//                       acme-research/private-model)
//   HUB_PUBLIC_REPO     public model (default alice/tiny-model)
//   CONFORMANCE_CHECK_TIMEOUT  seconds allowed per check (default 120)

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { inspect } from "node:util";
import * as hub from "@huggingface/hub";

const env = process.env;
const HUB_URL = (env.HUB_URL ?? "").replace(/\/+$/, "");
const HUB_URL_SMALL = (env.HUB_URL_SMALL ?? "").replace(/\/+$/, "");
const SMALL_CHUNK = Number(env.HUB_SMALL_CHUNK_SIZE || 5242880);
const SMALL_PAGE = Number(env.HUB_SMALL_PAGE_SIZE || 3);
const TOKEN = env.HUB_TOKEN || "hf_seed_alice_write_0000000000000000";
const TOKEN_READ = env.HUB_TOKEN_READ || "hf_seed_alice_read_00000000000000000";
const TOKEN_OTHER = env.HUB_TOKEN_OTHER || "hf_seed_bob_write_000000000000000000";
const ORG = env.HUB_ORG || "acme-research";
const PRIVATE_REPO = env.HUB_PRIVATE_REPO || "acme-research/private-model";
const PUBLIC_REPO = env.HUB_PUBLIC_REPO || "alice/tiny-model";
const CHECK_TIMEOUT_MS = 1000 * Number(env.CONFORMANCE_CHECK_TIMEOUT || 120);
const BAD_TOKEN = "hf_conformance_invalid_token_0000000000";

const MiB = 1024 * 1024;

if (!/^https?:\/\/[^/]+$/.test(HUB_URL)) {
	console.log("Bail out! HUB_URL must be the base URL of a local Hub, e.g. http://127.0.0.1:8080");
	process.exit(1);
}

/* ------------------------------------------------------------------ helpers */

const sha256 = (buf) => createHash("sha256").update(buf).digest("hex");
const gitBlobSha1 = (buf) =>
	createHash("sha1").update(`blob ${buf.length}\0`).update(buf).digest("hex");
const lfsPointer = (oid, size) =>
	Buffer.from(`version https://git-lfs.github.com/spec/v1\noid sha256:${oid}\nsize ${size}\n`);
const quoted = (s) => `"${s}"`;
const short = (v) => inspect(v, { depth: 4, breakLength: Infinity, maxStringLength: 200, maxArrayLength: 20 });

async function collect(iter) {
	const out = [];
	for await (const x of iter) out.push(x);
	return out;
}

/** A local file to upload: path, bytes, hashes, and the expected tree entry. */
function makeFile(path, content) {
	const buf = Buffer.isBuffer(content) ? content : Buffer.from(content);
	return { path, buf, size: buf.length, sha256: sha256(buf), sha1: gitBlobSha1(buf) };
}

const asUpload = (files) => files.map((f) => ({ path: f.path, content: new Blob([f.buf]) }));

/** Expect `promise` to reject with a HubApiError whose status is in `statuses`. */
async function rejectsWith(promise, statuses, what) {
	let value;
	try {
		value = await promise;
	} catch (err) {
		if (!(err instanceof hub.HubApiError)) {
			throw new Error(`${what}: expected HubApiError with status ${statuses.join("|")}, got ${err?.name}: ${err?.message}`);
		}
		if (!statuses.includes(err.statusCode)) {
			throw new Error(
				`${what}: expected HTTP ${statuses.join("|")}, server answered ${err.statusCode} (${err.message}; body ${short(err.data)})`,
			);
		}
		return err;
	}
	throw new Error(`${what}: expected HubApiError with status ${statuses.join("|")}, but the call succeeded and returned ${short(value)}`);
}

/* ------------------------------------------ request tracing for diagnostics */

// Every client call gets this fetch: it records what the client sent and what
// came back (after redirects), so a failing check can show the exchange.
const trace = [];
const TRACED_HEADERS = ["content-type", "content-range", "etag", "x-error-code", "x-error-message", "link", "location", "x-repo-commit", "x-linked-size", "x-linked-etag", "x-total-count"];
async function tfetch(input, init = {}) {
	const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
	const headers = new Headers(init.headers ?? {});
	const rec = {
		method: (init.method ?? "GET").toUpperCase(),
		url,
		range: headers.get("range"),
		auth: headers.has("authorization"),
	};
	trace.push(rec);
	try {
		const res = await fetch(input, init);
		rec.status = res.status;
		rec.finalUrl = res.url;
		rec.headers = {};
		for (const h of TRACED_HEADERS) if (res.headers.has(h)) rec.headers[h] = res.headers.get(h);
		const path = new URL(url).pathname;
		if (res.ok && (/\/preupload\//.test(path) || /\/info\/lfs\/objects\/batch$/.test(path))) {
			rec.json = await res.clone().json().catch(() => undefined);
		}
		return res;
	} catch (err) {
		rec.error = String(err?.cause ?? err);
		throw err;
	}
}

async function adminLog(base) {
	const res = await fetch(`${base}/_admin/log`);
	if (!res.ok) throw new Error(`GET ${base}/_admin/log answered ${res.status}`);
	const log = await res.json();
	if (!Array.isArray(log)) throw new Error(`GET ${base}/_admin/log did not return a JSON array`);
	return log;
}
async function maxSeq(base) {
	try {
		const log = await adminLog(base);
		return log.reduce((m, r) => Math.max(m, Number(r.seq) || 0), 0);
	} catch {
		return null;
	}
}
function fmtLog(r) {
	const q = r.query && (typeof r.query === "string" ? r.query : JSON.stringify(r.query));
	return `${r.seq} ${r.origin} ${r.method} ${r.path}${q ? (String(q).startsWith("?") ? q : "?" + q) : ""} -> ${r.status}` +
		`${r.range ? ` range=${r.range}` : ""} bytes=${r.bytes} auth=${r.auth}`;
}
function queryMatches(rec, url) {
	const want = [...new URL(url).searchParams];
	if (want.length === 0 || rec.query === undefined || rec.query === null) return true;
	if (typeof rec.query === "string") {
		const got = new URLSearchParams(rec.query.replace(/^\?/, ""));
		return want.every(([k, v]) => got.get(k) === v);
	}
	if (typeof rec.query === "object") {
		return want.every(([k, v]) => rec.query[k] === v || (Array.isArray(rec.query[k]) && rec.query[k].includes(v)));
	}
	return true;
}

/* ------------------------------------------------------------- TAP harness */

const checks = [];
const state = {};
/**
 * Register a check.  `needs` lists state keys set by earlier checks: when one
 * is missing (its check failed) this check is reported as skipped, so one
 * server bug shows as one failure.  `server` names the admin log to show on
 * failure.
 */
function check(name, fn, { needs = [], server = HUB_URL, skip } = {}) {
	checks.push({ name: name.replace(/#/g, "No."), fn, needs, server, skip });
}

async function runAll() {
	console.log(`1..${checks.length}`);
	console.log(`# @huggingface/hub against ${HUB_URL}${HUB_URL_SMALL ? ` and ${HUB_URL_SMALL}` : ""}`);
	let failed = 0;
	let n = 0;
	for (const c of checks) {
		n++;
		const missing = c.needs.filter((k) => state[k] === undefined);
		const skip = typeof c.skip === "function" ? c.skip() : c.skip;
		if (skip) {
			console.log(`ok ${n} - ${c.name} # SKIP ${skip}`);
			continue;
		}
		if (missing.length) {
			console.log(`ok ${n} - ${c.name} # SKIP an earlier check failed (no ${missing.join(", ")})`);
			continue;
		}
		const traceStart = trace.length;
		const seqStart = await maxSeq(c.server);
		let timer;
		try {
			await Promise.race([
				c.fn(),
				new Promise((_, reject) => {
					timer = setTimeout(() => reject(new Error(`timed out after ${CHECK_TIMEOUT_MS / 1000} s`)), CHECK_TIMEOUT_MS);
				}),
			]);
			console.log(`ok ${n} - ${c.name}`);
		} catch (err) {
			failed++;
			console.log(`not ok ${n} - ${c.name}`);
			const msg = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
			for (const line of msg.split("\n").slice(0, 40)) console.log(`#   ${line}`);
			const reqs = trace.slice(traceStart).slice(-10);
			if (reqs.length) {
				console.log("#   client requests (last 10 of this check):");
				for (const r of reqs) {
					console.log(
						`#     ${r.method} ${r.url}${r.range ? ` [Range: ${r.range}]` : ""} -> ` +
							(r.error ? `network error ${r.error}` : `${r.status}${r.finalUrl && r.finalUrl !== r.url ? ` (via ${r.finalUrl})` : ""} ${JSON.stringify(r.headers)}`),
					);
				}
			}
			if (seqStart !== null) {
				try {
					const recs = (await adminLog(c.server)).filter((r) => Number(r.seq) > seqStart).slice(-15);
					if (recs.length) {
						console.log(`#   server log of ${c.server} (last 15 of this check):`);
						for (const r of recs) console.log(`#     ${fmtLog(r)}`);
					}
				} catch {
					/* the admin log is best effort here */
				}
			}
		} finally {
			clearTimeout(timer);
		}
	}
	console.log(`# ${checks.length - failed} passed, ${failed} failed`);
	return failed;
}

/* ------------------------------------------------------------------ fixtures */

const rid = `${Date.now().toString(36)}${randomBytes(3).toString("hex")}`;
const A = { hubUrl: HUB_URL, fetch: tfetch };
const WA = { ...A, accessToken: TOKEN };

const small = makeFile("config.json", JSON.stringify({ architectures: ["TinyModel"], hidden_size: 16, conformance: rid }, null, 2) + "\n");
const nested = makeFile("docs/sub/notes.txt", `notes for ${rid}\nünïcødé ✓\n`);
const big = makeFile("big/random-20MiB.dat", randomBytes(20 * MiB));
const firstUpload = [small, nested, big];
const config2 = makeFile("config.json", JSON.stringify({ architectures: ["TinyModel"], hidden_size: 32, conformance: rid }, null, 2) + "\n");
const devFile = makeFile("dev-only.txt", `only on the dev branch ${rid}\n`);
const dsText = makeFile("data/train.csv", "id,text\n1,hello\n2,world\n");
const dsBin = makeFile("data/small.bin", Buffer.concat([Buffer.from([0, 1, 2, 3, 0, 255]), randomBytes(4090)]));

// repos are named after the user that whoAmI reports
let user = "alice";
const model = () => ({ type: "model", name: `${user}/conf-model-${rid}` });
const dataset = () => ({ type: "dataset", name: `${user}/conf-data-${rid}` });

/* ------------------------------------------------------------------- checks */

// --- identity -------------------------------------------------------------

check("whoAmI with a write token names the user, its orgs and a write role", async () => {
	const me = await hub.whoAmI({ ...WA });
	// the keys the Hub sends for a user (the client's own spec, who-am-i.spec.ts)
	const keys = ["type", "id", "name", "fullname", "email", "emailVerified", "canPay", "isPro", "periodEnd", "avatarUrl", "billingMode", "orgs", "auth"];
	assert.deepEqual(keys.filter((k) => !(k in me)), [], `missing keys in ${short(me)}`);
	assert.equal(me.type, "user", `type: ${short(me)}`);
	assert.equal(typeof me.name, "string");
	user = me.name;
	assert.ok(Array.isArray(me.orgs), `orgs must be an array: ${short(me.orgs)}`);
	assert.ok(me.orgs.some((o) => o.name === ORG && o.type === "org"), `orgs must include ${ORG} (type "org"): ${short(me.orgs)}`);
	assert.equal(me.auth?.type, "access_token", `auth.type: ${short(me.auth)}`);
	assert.equal(me.auth.accessToken?.role, "write", `auth.accessToken.role: ${short(me.auth)}`);
	assert.ok(me.auth.accessToken.createdAt instanceof Date && !isNaN(me.auth.accessToken.createdAt), `auth.accessToken.createdAt must be an ISO date string: ${short(me.auth.accessToken)}`);
	assert.equal(typeof me.auth.accessToken.displayName, "string", "auth.accessToken.displayName");
	state.user = user;
});

check("whoAmI with a read token reports role read for the same user", async () => {
	const me = await hub.whoAmI({ ...A, accessToken: TOKEN_READ });
	assert.equal(me.name, user);
	assert.equal(me.auth?.accessToken?.role, "read", `auth: ${short(me.auth)}`);
}, { needs: ["user"] });

check("whoAmI with an unknown token fails with 401", async () => {
	await rejectsWith(hub.whoAmI({ ...A, accessToken: BAD_TOKEN }), [401], "whoAmI(bad token)");
});

// --- repo creation ---------------------------------------------------------

check("createRepo (model) returns the repo URL on this hub", async () => {
	const out = await hub.createRepo({ ...WA, repo: model() });
	assert.equal(out.repoUrl, `${HUB_URL}/${model().name}`, "repoUrl (the Hub answers {url: <hub>/<ns>/<name>})");
	assert.equal(typeof out.id, "string", `id must be a string: ${short(out)}`);
	state.model = model();
}, { needs: ["user"] });

check("createRepo (model) again fails with 409 and a body with error and url", async () => {
	const err = await rejectsWith(hub.createRepo({ ...WA, repo: model() }), [409], "second createRepo");
	assert.equal(typeof err.data?.error, "string", `409 body must have "error": ${short(err.data)}`);
	assert.equal(err.data?.url, `${HUB_URL}/${model().name}`, `409 body must carry "url" (huggingface_hub exist_ok reads it): ${short(err.data)}`);
}, { needs: ["model"] });

check("createRepo (dataset) returns a /datasets/ URL", async () => {
	const out = await hub.createRepo({ ...WA, repo: dataset() });
	assert.equal(out.repoUrl, `${HUB_URL}/datasets/${dataset().name}`, "repoUrl");
	state.dataset = dataset();
}, { needs: ["user"] });

check("createRepo (dataset) again fails with 409", async () => {
	await rejectsWith(hub.createRepo({ ...WA, repo: dataset() }), [409], "second createRepo(dataset)");
}, { needs: ["dataset"] });

check("repoExists: true for the new repos, false for a missing one", async () => {
	assert.equal(await hub.repoExists({ ...WA, repo: model() }), true, "model");
	assert.equal(await hub.repoExists({ ...WA, repo: dataset() }), true, "dataset");
	assert.equal(await hub.repoExists({ ...WA, repo: { type: "model", name: `${user}/no-such-repo-${rid}` } }), false, "missing repo");
	assert.equal(await hub.repoExists({ ...WA, repo: { type: "dataset", name: model().name } }), false, "a model id asked as a dataset");
}, { needs: ["model", "dataset"] });

check("a new repo has one commit, 'initial commit', holding .gitattributes", async () => {
	const commits = await collect(hub.listCommits({ ...WA, repo: model() }));
	assert.equal(commits.length, 1, `commits: ${short(commits.map((c) => c.title))}`);
	assert.equal(commits[0].title, "initial commit");
	assert.match(commits[0].oid, /^[0-9a-f]{40}$/);
	state.initialCommit = commits[0].oid;
	const files = await collect(hub.listFiles({ ...WA, repo: model() }));
	assert.deepEqual(files.map((f) => f.path), [".gitattributes"], "files of a new repo");
}, { needs: ["model"] });

// --- upload ---------------------------------------------------------------

check("uploadFiles: a small file, a nested file and a 20 MiB LFS file in one commit", async () => {
	const out = await hub.uploadFiles({ ...WA, repo: model(), files: asUpload(firstUpload), commitTitle: "Upload first files", useXet: false });
	assert.match(out?.commit?.oid ?? "", /^[0-9a-f]{40}$/, `commit oid: ${short(out)}`);
	assert.equal(out.commit.url, `${HUB_URL}/${model().name}/commit/${out.commit.oid}`, "commitUrl");
	state.upload1 = out.commit.oid;
}, { needs: ["model"] });

check("preupload classified the 20 MiB file as lfs and the small ones as regular", async () => {
	const pre = trace.filter((r) => r.method === "POST" && /\/api\/models\/.*\/preupload\//.test(r.url) && r.json).at(-1)?.json;
	assert.ok(pre?.files, "no preupload answer recorded");
	const mode = Object.fromEntries(pre.files.map((f) => [f.path, f.uploadMode]));
	assert.deepEqual(mode, { [small.path]: "regular", [nested.path]: "regular", [big.path]: "lfs" }, `preupload answer ${short(pre)}`);
	const batch = trace.filter((r) => /\/info\/lfs\/objects\/batch$/.test(r.url) && r.json).at(-1)?.json;
	assert.ok(batch, "no LFS batch answer recorded");
	assert.notEqual(batch.transfer, "xet", "the client asked without xet; the answer must not be a xet transfer");
	const obj = batch.objects?.find((o) => o.oid === big.sha256);
	assert.ok(obj?.actions?.upload?.href, `batch answer must give an upload action for a new object: ${short(batch)}`);
}, { needs: ["upload1"] });

// --- listing --------------------------------------------------------------

function checkEntry(entry, f) {
	assert.equal(entry.type, "file", `${f.path}: type`);
	assert.equal(entry.size, f.size, `${f.path}: size`);
	if (f.lfs) {
		const pointer = lfsPointer(f.sha256, f.size);
		assert.deepEqual(entry.lfs, { oid: f.sha256, size: f.size, pointerSize: pointer.length }, `${f.path}: lfs`);
		assert.equal(entry.oid, gitBlobSha1(pointer), `${f.path}: oid must be the git sha1 of the LFS pointer blob`);
	} else {
		assert.equal(entry.lfs, undefined, `${f.path}: a regular file has no lfs: ${short(entry)}`);
		assert.equal(entry.oid, f.sha1, `${f.path}: oid must be the git blob sha1`);
	}
}
big.lfs = true;
dsBin.lfs = true;

check("listFiles recursive: paths, types, sizes and oids match the upload", async () => {
	const entries = await collect(hub.listFiles({ ...WA, repo: model(), recursive: true }));
	const byPath = new Map(entries.map((e) => [e.path, e]));
	assert.equal(byPath.size, entries.length, `duplicate paths: ${short(entries.map((e) => e.path))}`);
	const want = [".gitattributes", "big", "big/random-20MiB.dat", "config.json", "docs", "docs/sub", "docs/sub/notes.txt"];
	assert.deepEqual([...byPath.keys()].sort(), want, "paths");
	for (const d of ["big", "docs", "docs/sub"]) {
		assert.equal(byPath.get(d).type, "directory", `${d}: type`);
		assert.match(byPath.get(d).oid ?? "", /^[0-9a-f]{40}$/, `${d}: oid (tree sha1)`);
	}
	for (const f of firstUpload) checkEntry(byPath.get(f.path), f);
	state.listed = true;
}, { needs: ["upload1"] });

check("listFiles non-recursive lists direct children only (root, docs, docs/sub)", async () => {
	const names = async (path) => (await collect(hub.listFiles({ ...WA, repo: model(), path }))).map((e) => `${e.type}:${e.path}`).sort();
	assert.deepEqual(await names(undefined), ["directory:big", "directory:docs", "file:.gitattributes", "file:config.json"], "root");
	assert.deepEqual(await names("docs"), ["directory:docs/sub"], "docs");
	assert.deepEqual(await names("docs/sub"), ["file:docs/sub/notes.txt"], "docs/sub");
}, { needs: ["upload1"] });

check("listFiles of a missing folder fails with 404", async () => {
	await rejectsWith(collect(hub.listFiles({ ...WA, repo: model(), path: "no/such/dir" })), [404], "listFiles(no/such/dir)");
}, { needs: ["upload1"] });

check("pathsInfo returns entries for existing paths and omits missing ones", async () => {
	const info = await hub.pathsInfo({ ...WA, repo: model(), paths: [small.path, big.path, "missing.txt", "docs"] });
	const byPath = new Map(info.map((e) => [e.path, e]));
	assert.deepEqual([...byPath.keys()].sort(), [big.path, small.path, "docs"].sort(), `paths: ${short(info)}`);
	checkEntry(byPath.get(small.path), small);
	checkEntry(byPath.get(big.path), big);
	assert.equal(byPath.get("docs").type, "directory");
}, { needs: ["upload1"] });

// --- metadata and downloads -------------------------------------------------

check("fileDownloadInfo of a regular file: size and quoted git-sha1 etag", async () => {
	const info = await hub.fileDownloadInfo({ ...WA, repo: model(), path: small.path });
	assert.equal(info?.size, small.size, `size: ${short(info)}`);
	assert.equal(info.etag, quoted(small.sha1), "etag");
}, { needs: ["upload1"] });

check("fileDownloadInfo of an LFS file: size and quoted sha256 etag (through the CDN redirect)", async () => {
	const info = await hub.fileDownloadInfo({ ...WA, repo: model(), path: big.path });
	assert.equal(info?.size, big.size, `size: ${short(info)}`);
	assert.equal(info.etag, quoted(big.sha256), "etag (the Hub's CDN answers the LFS object with ETag \"<sha256>\")");
	assert.equal(info.xet, undefined, "no xet info for an LFS file");
}, { needs: ["upload1"] });

check("fileDownloadInfo raw of an LFS file describes the pointer", async () => {
	const pointer = lfsPointer(big.sha256, big.size);
	const info = await hub.fileDownloadInfo({ ...WA, repo: model(), path: big.path, raw: true });
	assert.equal(info?.size, pointer.length, `size: ${short(info)}`);
	assert.equal(info.etag, quoted(gitBlobSha1(pointer)), "etag");
}, { needs: ["upload1"] });

check("fileDownloadInfo of a missing file returns null (404 EntryNotFound)", async () => {
	assert.equal(await hub.fileDownloadInfo({ ...WA, repo: model(), path: "no-such-file.txt" }), null);
	assert.equal(await hub.fileDownloadInfo({ ...WA, repo: model(), path: "docs/no-such-file.txt" }), null);
}, { needs: ["upload1"] });

check("fileDownloadInfo at a missing revision throws 404 (not null)", async () => {
	await rejectsWith(hub.fileDownloadInfo({ ...WA, repo: model(), path: small.path, revision: "no-such-branch" }), [404], "fileDownloadInfo(rev=no-such-branch)");
}, { needs: ["upload1"] });

check("downloadFile of the small files returns the exact bytes", async () => {
	for (const f of [small, nested]) {
		const blob = await hub.downloadFile({ ...WA, repo: model(), path: f.path });
		assert.ok(blob, `${f.path}: null`);
		const got = Buffer.from(await blob.arrayBuffer());
		assert.equal(got.length, f.size, `${f.path}: length`);
		assert.equal(sha256(got), f.sha256, `${f.path}: sha256`);
	}
}, { needs: ["upload1"] });

check("downloadFile of the 20 MiB LFS file returns the exact bytes", async () => {
	const blob = await hub.downloadFile({ ...WA, repo: model(), path: big.path });
	assert.ok(blob, "null");
	assert.equal(blob.size, big.size, "blob.size");
	const got = Buffer.from(await blob.arrayBuffer());
	assert.equal(got.length, big.size, "length");
	assert.equal(sha256(got), big.sha256, "sha256");
	state.bigDownloaded = true;
}, { needs: ["upload1"] });

check("server log: the LFS download was a 302 on the API origin then a 200 from the CDN origin", async () => {
	const log = await adminLog(HUB_URL);
	const resolve = log.filter((r) => r.origin === "api" && r.method === "GET" && r.path === `/${model().name}/resolve/main/${big.path}`);
	assert.ok(resolve.some((r) => r.status === 302), `resolve GETs: ${short(resolve.map(fmtLog))}`);
	const cdn = log.filter((r) => r.origin === "cdn" && r.method === "GET" && r.status === 200 && Number(r.bytes) === big.size);
	assert.ok(cdn.length >= 1, "no full 200 GET of the object on the CDN origin");
}, { needs: ["bigDownloaded"] });

check("downloadFile of an LFS file raw returns the git-lfs pointer", async () => {
	const blob = await hub.downloadFile({ ...WA, repo: model(), path: big.path, raw: true });
	assert.equal(await blob?.text(), lfsPointer(big.sha256, big.size).toString());
}, { needs: ["upload1"] });

const RANGES = [[0, 1], [0, 1024], [MiB - 3, MiB + 5], [5 * MiB - 1, 5 * MiB + 1], [12345678, 12345678 + MiB], [20 * MiB - 17, 20 * MiB], [20 * MiB - 1, 20 * MiB]];
check("byte ranges of the LFS file (Blob.slice) return the exact bytes as 206 from the CDN", async () => {
	const blob = await hub.downloadFile({ ...WA, repo: model(), path: big.path });
	const seq = await maxSeq(HUB_URL);
	for (const [a, b] of RANGES) {
		const got = Buffer.from(await blob.slice(a, b).arrayBuffer());
		assert.equal(got.length, b - a, `[${a},${b}): length`);
		assert.ok(got.equals(big.buf.subarray(a, b)), `[${a},${b}): bytes differ`);
	}
	if (seq !== null) {
		const cdn = (await adminLog(HUB_URL)).filter((r) => Number(r.seq) > seq && r.origin === "cdn" && r.method === "GET");
		for (const [a, b] of RANGES) {
			const r = cdn.find((x) => x.range === `bytes=${a}-${b - 1}`);
			assert.ok(r, `no CDN GET with range bytes=${a}-${b - 1}: ${short(cdn.map(fmtLog))}`);
			assert.equal(r.status, 206, `bytes=${a}-${b - 1}: status`);
			assert.equal(Number(r.bytes), b - a, `bytes=${a}-${b - 1}: bytes sent`);
		}
	}
}, { needs: ["upload1"] });

check("byte ranges of a regular file return the exact bytes", async () => {
	const blob = await hub.downloadFile({ ...WA, repo: model(), path: nested.path });
	for (const [a, b] of [[0, 1], [3, 9], [nested.size - 4, nested.size]]) {
		const got = Buffer.from(await blob.slice(a, b).arrayBuffer());
		assert.ok(got.equals(nested.buf.subarray(a, b)), `[${a},${b}): got ${short(got)}`);
	}
}, { needs: ["upload1"] });

check("downloadFile of a missing file returns null", async () => {
	assert.equal(await hub.downloadFile({ ...WA, repo: model(), path: "no-such-file.bin" }), null);
}, { needs: ["upload1"] });

check("raw HTTP: resolve of an LFS file is a 302 to another origin with X-Linked-Size, X-Linked-Etag, X-Repo-Commit", async () => {
	const url = `${HUB_URL}/${model().name}/resolve/main/${big.path}`;
	const res = await fetch(url, { method: "HEAD", redirect: "manual", headers: { Authorization: `Bearer ${TOKEN}` } });
	assert.equal(res.status, 302, "status");
	const loc = new URL(res.headers.get("location") ?? "", url);
	assert.match(res.headers.get("location") ?? "", /^https?:\/\//, "Location must be absolute");
	assert.notEqual(loc.origin, new URL(HUB_URL).origin, "Location must be on the CDN origin");
	assert.equal(res.headers.get("x-linked-size"), String(big.size), "X-Linked-Size");
	assert.equal(res.headers.get("x-linked-etag"), quoted(big.sha256), "X-Linked-Etag");
	assert.equal(res.headers.get("x-repo-commit"), state.upload1, "X-Repo-Commit");
	const part = await fetch(loc, { headers: { Range: "bytes=10-19" } });
	assert.equal(part.status, 206, "CDN ranged GET status");
	assert.equal(part.headers.get("content-range"), `bytes 10-19/${big.size}`, "Content-Range");
	assert.ok(Buffer.from(await part.arrayBuffer()).equals(big.buf.subarray(10, 20)), "CDN bytes");
	const past = await fetch(url, { headers: { Authorization: `Bearer ${TOKEN}`, Range: `bytes=${big.size}-` } });
	await past.arrayBuffer();
	assert.equal(past.status, 416, "a range starting at EOF must be 416");
}, { needs: ["upload1"] });

check("raw HTTP: resolve of a regular file is 200 with ETag, Content-Length, X-Repo-Commit; missing file is 404 EntryNotFound", async () => {
	const res = await fetch(`${HUB_URL}/${model().name}/resolve/main/${small.path}`, { method: "HEAD", redirect: "manual", headers: { Authorization: `Bearer ${TOKEN}` } });
	assert.equal(res.status, 200, "status");
	assert.equal(res.headers.get("etag"), quoted(small.sha1), "ETag");
	assert.equal(res.headers.get("content-length"), String(small.size), "Content-Length");
	assert.equal(res.headers.get("x-repo-commit"), state.upload1, "X-Repo-Commit");
	const miss = await fetch(`${HUB_URL}/${model().name}/resolve/main/nope.txt`, { method: "HEAD", redirect: "manual", headers: { Authorization: `Bearer ${TOKEN}` } });
	assert.equal(miss.status, 404, "missing: status");
	assert.equal(miss.headers.get("x-error-code"), "EntryNotFound", "missing: X-Error-Code");
	assert.equal(miss.headers.get("x-repo-commit"), state.upload1, "missing: X-Repo-Commit");
}, { needs: ["upload1"] });

check("fileExists: true for present files, false for missing ones", async () => {
	assert.equal(await hub.fileExists({ ...WA, repo: model(), path: small.path }), true, small.path);
	assert.equal(await hub.fileExists({ ...WA, repo: model(), path: big.path }), true, big.path);
	assert.equal(await hub.fileExists({ ...WA, repo: model(), path: "no-such-file.txt" }), false, "missing");
	assert.equal(await hub.fileExists({ ...WA, repo: model(), path: "docs/sub/missing.txt" }), false, "missing nested");
}, { needs: ["upload1"] });

check("small API answers are fast (no Nagle/delayed-ACK stall): median of 20 calls < 20 ms", async () => {
	const times = [];
	for (let i = 0; i < 20; i++) {
		const t0 = performance.now();
		await hub.pathsInfo({ ...WA, repo: model(), paths: [small.path] });
		times.push(performance.now() - t0);
	}
	times.sort((a, b) => a - b);
	const median = times[10];
	console.log(`#   pathsInfo latency: median ${median.toFixed(1)} ms, max ${times.at(-1).toFixed(1)} ms`);
	assert.ok(median < 20, `median ${median.toFixed(1)} ms (a server without TCP_NODELAY adds ~40 ms, hub-api.md §14)`);
}, { needs: ["upload1"] });

check("modelInfo (revision HEAD) names the repo, public, with sha = last commit", async () => {
	const info = await hub.modelInfo({ ...WA, name: model().name, additionalFields: ["sha"] });
	assert.equal(info.name, model().name, `name: ${short(info)}`);
	assert.equal(info.private, false, "private");
	assert.equal(info.sha, state.upload1, "sha");
	assert.ok(!isNaN(info.updatedAt), "lastModified must be a date");
}, { needs: ["upload1"] });

// --- commits ---------------------------------------------------------------

check("listCommits: newest first, titles, oids and author after the upload", async () => {
	const commits = await collect(hub.listCommits({ ...WA, repo: model() }));
	assert.deepEqual(commits.map((c) => c.title), ["Upload first files", "initial commit"], "titles");
	assert.equal(commits[0].oid, state.upload1, "head oid");
	assert.equal(commits[0].authors[0]?.username, user, `authors: ${short(commits[0].authors)}`);
	assert.equal(typeof commits[0].authors[0].avatarUrl, "string", "authors[0].avatar");
	assert.equal(typeof commits[0].message, "string", "message");
	assert.ok(!isNaN(commits[0].date), "date");
	assert.ok(commits[0].date >= commits[1].date, "dates newest first");
}, { needs: ["upload1", "initialCommit"] });

check("a commit with the current parentCommit succeeds; a stale parentCommit fails with 412", async () => {
	const out = await hub.uploadFiles({ ...WA, repo: model(), files: asUpload([config2]), commitTitle: "Update config", parentCommit: state.upload1, useXet: false });
	assert.match(out?.commit?.oid ?? "", /^[0-9a-f]{40}$/);
	state.upload2 = out.commit.oid;
	await rejectsWith(
		hub.uploadFiles({ ...WA, repo: model(), files: asUpload([makeFile("stale.txt", "stale\n")]), commitTitle: "Stale", parentCommit: state.upload1, useXet: false }),
		[412],
		"commit with a stale parentCommit",
	);
	const blob = await hub.downloadFile({ ...WA, repo: model(), path: config2.path });
	assert.equal(sha256(Buffer.from(await blob.arrayBuffer())), config2.sha256, "config.json after update");
}, { needs: ["upload1"] });

check("listCommits with batchSize 1 follows Link rel=next through every page", async () => {
	const before = trace.length;
	const commits = await collect(hub.listCommits({ ...WA, repo: model(), batchSize: 1 }));
	assert.deepEqual(commits.map((c) => c.title), ["Update config", "Upload first files", "initial commit"]);
	const pages = trace.slice(before).filter((r) => r.url.includes("/commits/"));
	assert.ok(pages.length >= 3, `commit pages requested: ${short(pages.map((p) => [p.url, p.headers?.link]))}`);
}, { needs: ["upload2"] });

check("countCommits reads X-Total-Count", async () => {
	assert.equal(await hub.countCommits({ ...WA, repo: model() }), 3);
}, { needs: ["upload2"] });

check("listFiles with expand: lastCommit of every entry is the commit that last changed it", async () => {
	const entries = await collect(hub.listFiles({ ...WA, repo: model(), recursive: true, expand: true }));
	const byPath = new Map(entries.map((e) => [e.path, e]));
	// .gitattributes is left out: the Hub may rewrite it in a commit that adds an LFS file it does not match
	const want = { [small.path]: [state.upload2, "Update config"], [nested.path]: [state.upload1, "Upload first files"], [big.path]: [state.upload1, "Upload first files"] };
	for (const [path, [id, title]] of Object.entries(want)) {
		const lc = byPath.get(path)?.lastCommit;
		assert.ok(lc, `${path}: no lastCommit in ${short(byPath.get(path))}`);
		assert.equal(lc.id, id, `${path}: lastCommit.id`);
		assert.equal(lc.title, title, `${path}: lastCommit.title`);
		assert.ok(!isNaN(new Date(lc.date)), `${path}: lastCommit.date ${short(lc.date)}`);
	}
	const ga = byPath.get(".gitattributes")?.lastCommit?.id;
	assert.ok([state.initialCommit, state.upload1].includes(ga), `.gitattributes: lastCommit.id ${ga}`);
	for (const d of ["big", "docs", "docs/sub"]) assert.equal(byPath.get(d)?.lastCommit?.id, state.upload1, `${d}/: lastCommit.id`);
	checkEntry(byPath.get(big.path), big);
}, { needs: ["upload2", "initialCommit"] });

check("pathsInfo with expand: true gives lastCommit", async () => {
	const info = await hub.pathsInfo({ ...WA, repo: model(), paths: [small.path, big.path], expand: true });
	const byPath = new Map(info.map((e) => [e.path, e]));
	assert.equal(byPath.get(small.path)?.lastCommit?.id, state.upload2, `config.json: ${short(byPath.get(small.path))}`);
	assert.equal(byPath.get(big.path)?.lastCommit?.id, state.upload1, `big: ${short(byPath.get(big.path))}`);
	assert.ok(byPath.get(big.path).lastCommit.date instanceof Date && !isNaN(byPath.get(big.path).lastCommit.date), "lastCommit.date");
}, { needs: ["upload2"] });

check("snapshotDownload fills a huggingface_hub-style cache (refs, blobs by etag, snapshot symlinks)", async () => {
	const { mkdtemp, readFile, readlink, rm, readdir } = await import("node:fs/promises");
	const { tmpdir } = await import("node:os");
	const { join } = await import("node:path");
	const cacheDir = await mkdtemp(join(tmpdir(), "hubfs-conformance-cache-"));
	const debug = console.debug;
	console.debug = (...args) => console.log(`#   (client) ${args.join(" ")}`);
	try {
		const snap = await hub.snapshotDownload({ ...WA, repo: model(), cacheDir });
		const folder = join(cacheDir, `models--${model().name.replace("/", "--")}`);
		assert.equal(snap, join(folder, "snapshots", state.upload2), "snapshot folder");
		assert.equal(await readFile(join(folder, "refs", "main"), "utf8"), state.upload2, "refs/main");
		const files = [config2, nested, big];
		for (const f of files) {
			const got = await readFile(join(snap, f.path));
			assert.equal(sha256(got), f.sha256, `${f.path}: sha256 in the snapshot`);
			const target = await readlink(join(snap, f.path));
			assert.ok(target.endsWith(`blobs/${f.lfs ? f.sha256 : f.sha1}`), `${f.path}: symlink ${target}`);
		}
		const blobs = (await readdir(join(folder, "blobs"))).sort();
		assert.ok(blobs.every((b) => !b.endsWith(".incomplete")), `blobs: ${short(blobs)}`);
	} finally {
		console.debug = debug;
		await rm(cacheDir, { recursive: true, force: true });
	}
}, { needs: ["upload2"] });

// --- branches -------------------------------------------------------------

check("createBranch dev from main; creating it again fails with 409", async () => {
	await hub.createBranch({ ...WA, repo: model(), branch: "dev" });
	state.dev = true;
	await rejectsWith(hub.createBranch({ ...WA, repo: model(), branch: "dev" }), [409], "createBranch(dev) again");
}, { needs: ["upload2"] });

check("uploadFiles to branch dev, then listFiles and downloadFile at dev (main unchanged)", async () => {
	const out = await hub.uploadFiles({ ...WA, repo: model(), branch: "dev", files: asUpload([devFile]), commitTitle: "Dev only", useXet: false });
	assert.match(out?.commit?.oid ?? "", /^[0-9a-f]{40}$/);
	const dev = (await collect(hub.listFiles({ ...WA, repo: model(), revision: "dev", recursive: true }))).map((e) => e.path).sort();
	assert.deepEqual(dev, [".gitattributes", "big", big.path, "config.json", devFile.path, "docs", "docs/sub", nested.path].sort(), "dev listing");
	const main = (await collect(hub.listFiles({ ...WA, repo: model(), recursive: true }))).map((e) => e.path);
	assert.ok(!main.includes(devFile.path), "main must not have the dev file");
	const blob = await hub.downloadFile({ ...WA, repo: model(), path: devFile.path, revision: "dev" });
	assert.equal(sha256(Buffer.from(await blob.arrayBuffer())), devFile.sha256, "dev file bytes");
	assert.equal(await hub.downloadFile({ ...WA, repo: model(), path: devFile.path }), null, "dev file at main");
	const commits = await collect(hub.listCommits({ ...WA, repo: model(), revision: "dev" }));
	assert.deepEqual(commits.map((c) => c.title), ["Dev only", "Update config", "Upload first files", "initial commit"], "dev history");
	assert.equal(commits[0].oid, out.commit.oid);
	const info = await hub.modelInfo({ ...WA, name: model().name, revision: "dev", additionalFields: ["sha"] });
	assert.equal(info.sha, out.commit.oid, "modelInfo at dev: sha");
}, { needs: ["dev"] });

check("createBranch with empty: true makes a branch without files", async () => {
	await hub.createBranch({ ...WA, repo: model(), branch: "empty-branch", empty: true });
	assert.equal(await hub.downloadFile({ ...WA, repo: model(), path: small.path, revision: "empty-branch" }), null);
}, { needs: ["upload2"] });

check("a branch named feature/x (%2F in every URL): create, upload, download, modelInfo", async () => {
	const br = "feature/x";
	await hub.createBranch({ ...WA, repo: model(), branch: br });
	const f = makeFile("feature.txt", `on ${br} ${rid}\n`);
	const out = await hub.uploadFiles({ ...WA, repo: model(), branch: br, files: asUpload([f]), commitTitle: "On feature/x", useXet: false });
	const blob = await hub.downloadFile({ ...WA, repo: model(), path: f.path, revision: br });
	assert.ok(blob, "downloadFile at feature/x returned null");
	assert.equal(sha256(Buffer.from(await blob.arrayBuffer())), f.sha256, "bytes at feature/x");
	const info = await hub.modelInfo({ ...WA, name: model().name, revision: br, additionalFields: ["sha"] });
	assert.equal(info.sha, out.commit.oid, "modelInfo sha at feature/x");
	assert.equal(await hub.fileExists({ ...WA, repo: model(), path: f.path, revision: br }), true, "fileExists at feature/x");
	assert.equal(await hub.fileExists({ ...WA, repo: model(), path: f.path }), false, "fileExists at main");
}, { needs: ["upload2"] });

check("uploadFiles with isPullRequest opens refs/pr/N; files readable there, main unchanged", async () => {
	const f = makeFile("from-pr.txt", `proposed ${rid}\n`);
	const out = await hub.uploadFiles({ ...WA, repo: model(), files: asUpload([f]), commitTitle: "Proposal", isPullRequest: true, useXet: false });
	const m = /\/discussions\/(\d+)$/.exec(out?.pullRequestUrl ?? "");
	assert.ok(m, `pullRequestUrl must end in /discussions/<n>: ${short(out)}`);
	assert.ok(out.pullRequestUrl.startsWith(`${HUB_URL}/${model().name}/discussions/`), `pullRequestUrl ${out.pullRequestUrl}`);
	const rev = `refs/pr/${m[1]}`;
	const blob = await hub.downloadFile({ ...WA, repo: model(), path: f.path, revision: rev });
	assert.ok(blob, `downloadFile at ${rev} returned null`);
	assert.equal(sha256(Buffer.from(await blob.arrayBuffer())), f.sha256, `bytes at ${rev}`);
	const info = await hub.modelInfo({ ...WA, name: model().name, revision: rev, additionalFields: ["sha"] });
	assert.equal(info.sha, out.commit.oid, `modelInfo sha at ${rev}`);
	assert.equal(await hub.fileExists({ ...WA, repo: model(), path: f.path }), false, "the PR file must not be on main");
}, { needs: ["upload2"] });

// --- delete ---------------------------------------------------------------

check("deleteFile makes a commit; the file is gone and empty folders vanish", async () => {
	const out = await hub.deleteFile({ ...WA, repo: model(), path: nested.path });
	assert.match(out?.commit?.oid ?? "", /^[0-9a-f]{40}$/, `deleteFile result: ${short(out)}`);
	assert.equal(await hub.fileExists({ ...WA, repo: model(), path: nested.path }), false, "fileExists after delete");
	assert.equal(await hub.fileDownloadInfo({ ...WA, repo: model(), path: nested.path }), null, "fileDownloadInfo after delete");
	const commits = await collect(hub.listCommits({ ...WA, repo: model() }));
	assert.equal(commits[0].title, `Delete ${nested.path}`, "head commit title");
	assert.equal(commits[0].oid, out.commit.oid, "head commit oid");
	const paths = (await collect(hub.listFiles({ ...WA, repo: model(), recursive: true }))).map((e) => e.path).sort();
	assert.deepEqual(paths, [".gitattributes", "big", big.path, "config.json"], "listing after delete (git has no empty folders)");
	// the file is still there at the previous commit
	const old = await hub.downloadFile({ ...WA, repo: model(), path: nested.path, revision: state.upload2 });
	assert.equal(sha256(Buffer.from(await old.arrayBuffer())), nested.sha256, "file at the previous commit sha");
}, { needs: ["upload2"] });

check("deleteFile of a missing file fails with 404", async () => {
	await rejectsWith(hub.deleteFile({ ...WA, repo: model(), path: "never-existed.txt" }), [404], "deleteFile(missing)");
}, { needs: ["upload2"] });

// --- dataset ----------------------------------------------------------------

check("dataset: upload, list (a small *.bin is LFS via the default .gitattributes), download", async () => {
	const out = await hub.uploadFiles({ ...WA, repo: dataset(), files: asUpload([dsText, dsBin]), commitTitle: "Add data", useXet: false });
	assert.equal(out?.commit?.url, `${HUB_URL}/datasets/${dataset().name}/commit/${out?.commit?.oid}`, "commitUrl");
	const entries = await collect(hub.listFiles({ ...WA, repo: dataset(), recursive: true }));
	const byPath = new Map(entries.map((e) => [e.path, e]));
	checkEntry(byPath.get(dsText.path), dsText);
	checkEntry(byPath.get(dsBin.path), dsBin);
	for (const f of [dsText, dsBin]) {
		const blob = await hub.downloadFile({ ...WA, repo: dataset(), path: f.path });
		assert.equal(sha256(Buffer.from(await blob.arrayBuffer())), f.sha256, `${f.path}: sha256`);
		assert.equal(await hub.fileExists({ ...WA, repo: dataset(), path: f.path }), true, `${f.path}: fileExists`);
	}
	const info = await hub.fileDownloadInfo({ ...WA, repo: dataset(), path: dsBin.path });
	assert.equal(info?.etag, quoted(dsBin.sha256), "fileDownloadInfo etag of the LFS .bin");
}, { needs: ["dataset"] });

check("dataset: an LFS object already stored is not uploaded again (batch answer without actions)", async () => {
	const copy = makeFile("data/copy-of-small.bin", dsBin.buf);
	copy.lfs = true;
	const before = trace.length;
	const out = await hub.uploadFiles({ ...WA, repo: dataset(), files: asUpload([copy]), commitTitle: "Same bytes again", useXet: false });
	assert.match(out?.commit?.oid ?? "", /^[0-9a-f]{40}$/);
	const batch = trace.slice(before).find((r) => /\/info\/lfs\/objects\/batch$/.test(r.url))?.json;
	const obj = batch?.objects?.find((o) => o.oid === dsBin.sha256);
	assert.ok(obj, `no batch answer for the object: ${short(batch)}`);
	assert.equal(obj.actions?.upload, undefined, `the Hub omits the upload action for a stored object: ${short(obj)}`);
	assert.ok(!trace.slice(before).some((r) => r.method === "PUT"), "the client PUT the object again");
	const [e] = await hub.pathsInfo({ ...WA, repo: dataset(), paths: [copy.path] });
	checkEntry(e, copy);
}, { needs: ["dataset"] });

check("dataset: paths with spaces, parentheses and non-ASCII letters round-trip", async () => {
	const f = makeFile("dir with space/naïve résumé (1).txt", `odd name ${rid}\n`);
	await hub.uploadFiles({ ...WA, repo: dataset(), files: asUpload([f]), commitTitle: "Odd names", useXet: false });
	const entries = await collect(hub.listFiles({ ...WA, repo: dataset(), path: "dir with space" }));
	assert.deepEqual(entries.map((e) => e.path), [f.path], "listing of 'dir with space'");
	checkEntry(entries[0], f);
	const blob = await hub.downloadFile({ ...WA, repo: dataset(), path: f.path });
	assert.ok(blob, "downloadFile returned null");
	assert.equal(sha256(Buffer.from(await blob.arrayBuffer())), f.sha256, "bytes");
	assert.equal(await hub.fileExists({ ...WA, repo: dataset(), path: f.path }), true, "fileExists");
}, { needs: ["dataset"] });

check("space: createRepo (sdk static), upload, list and download under /spaces/", async () => {
	const repo = { type: "space", name: `${user}/conf-space-${rid}` };
	const created = await hub.createRepo({ ...WA, repo, sdk: "static" });
	assert.equal(created.repoUrl, `${HUB_URL}/spaces/${repo.name}`, "repoUrl");
	const f = makeFile("index.html", `<p>${rid}</p>\n`);
	const out = await hub.uploadFiles({ ...WA, repo, files: asUpload([f]), commitTitle: "Page", useXet: false });
	assert.equal(out?.commit?.url, `${HUB_URL}/spaces/${repo.name}/commit/${out?.commit?.oid}`, "commitUrl");
	const paths = (await collect(hub.listFiles({ ...WA, repo }))).map((e) => e.path);
	assert.ok(paths.includes(f.path), `listing: ${short(paths)}`);
	const blob = await hub.downloadFile({ ...WA, repo, path: f.path });
	assert.equal(sha256(Buffer.from(await blob.arrayBuffer())), f.sha256, "bytes");
}, { needs: ["user"] });

// --- access control -----------------------------------------------------------

async function checkAllDownloads(repo, opts) {
	const entries = await collect(hub.listFiles({ ...opts, repo, recursive: true }));
	const files = entries.filter((e) => e.type === "file");
	assert.ok(files.length > 0, `no files listed in ${repo.name}`);
	for (const e of files) {
		const blob = await hub.downloadFile({ ...opts, repo, path: e.path });
		assert.ok(blob, `${e.path}: null`);
		const got = Buffer.from(await blob.arrayBuffer());
		assert.equal(got.length, e.size, `${e.path}: size`);
		if (e.lfs) assert.equal(sha256(got), e.lfs.oid, `${e.path}: sha256 vs listed lfs.oid`);
		else assert.equal(gitBlobSha1(got), e.oid, `${e.path}: git sha1 vs listed oid`);
	}
	return files;
}

check(`public ${PUBLIC_REPO}: anonymous listFiles and downloads match the listed oids`, async () => {
	await checkAllDownloads({ type: "model", name: PUBLIC_REPO }, A);
	assert.equal(await hub.repoExists({ ...A, repo: { type: "model", name: PUBLIC_REPO } }), true, "repoExists anonymous");
});

check(`private ${PRIVATE_REPO}: with the org member's write token, listFiles and downloads work`, async () => {
	const files = await checkAllDownloads({ type: "model", name: PRIVATE_REPO }, WA);
	assert.equal(await hub.repoExists({ ...WA, repo: { type: "model", name: PRIVATE_REPO } }), true, "repoExists");
	state.privateFile = files[0].path;
	const info = await hub.modelInfo({ ...WA, name: PRIVATE_REPO });
	assert.equal(info.private, true, "modelInfo private");
});

check(`private ${PRIVATE_REPO}: with the member's read token, listFiles and downloads work`, async () => {
	await checkAllDownloads({ type: "model", name: PRIVATE_REPO }, { ...A, accessToken: TOKEN_READ });
});

check(`private ${PRIVATE_REPO}: anonymous gets 401, repoExists false, no download`, async () => {
	const repo = { type: "model", name: PRIVATE_REPO };
	await rejectsWith(collect(hub.listFiles({ ...A, repo })), [401], "anonymous listFiles");
	assert.equal(await hub.repoExists({ ...A, repo }), false, "anonymous repoExists");
	await rejectsWith(hub.fileDownloadInfo({ ...A, repo, path: state.privateFile }), [401], "anonymous fileDownloadInfo");
	await rejectsWith(hub.downloadFile({ ...A, repo, path: state.privateFile }), [401], "anonymous downloadFile");
	await rejectsWith(hub.modelInfo({ ...A, name: PRIVATE_REPO }), [401], "anonymous modelInfo");
}, { needs: ["privateFile"] });

check(`private ${PRIVATE_REPO}: a non-member's token gets 404 RepoNotFound, repoExists false`, async () => {
	const repo = { type: "model", name: PRIVATE_REPO };
	const B = { ...A, accessToken: TOKEN_OTHER };
	const err = await rejectsWith(collect(hub.listFiles({ ...B, repo })), [404], "non-member listFiles");
	void err;
	assert.equal(await hub.repoExists({ ...B, repo }), false, "non-member repoExists");
	await rejectsWith(hub.fileDownloadInfo({ ...B, repo, path: state.privateFile }), [404], "non-member fileDownloadInfo (must throw, not return null)");
}, { needs: ["privateFile"] });

check("writes are refused: read token (403) and another user's token on the model repo", async () => {
	const files = asUpload([makeFile("forbidden.txt", "no\n")]);
	const e1 = await rejectsWith(hub.uploadFiles({ ...A, accessToken: TOKEN_READ, repo: model(), files, useXet: false }), [401, 403], "upload with a read token");
	const e2 = await rejectsWith(hub.uploadFiles({ ...A, accessToken: TOKEN_OTHER, repo: model(), files, useXet: false }), [401, 403], "upload by another user");
	console.log(`#   (read token -> ${e1.statusCode}, other user -> ${e2.statusCode})`);
	assert.equal(await hub.fileExists({ ...WA, repo: model(), path: "forbidden.txt" }), false, "nothing was committed");
}, { needs: ["upload1"] });

check("listModels by owner: the user's new model; org listing shows the private model to members only", async () => {
	const mine = await collect(hub.listModels({ ...WA, search: { owner: user } }));
	const m = mine.find((x) => x.name === model().name);
	assert.ok(m, `listModels(owner=${user}) lacks ${model().name}: ${short(mine.map((x) => x.name))}`);
	assert.equal(m.private, false, "private");
	assert.ok(mine.every((x) => x.name.startsWith(`${user}/`)), `owner filter: ${short(mine.map((x) => x.name))}`);
	const member = (await collect(hub.listModels({ ...WA, search: { owner: ORG } }))).map((x) => x.name);
	assert.ok(member.includes(PRIVATE_REPO), `member listing of ${ORG}: ${short(member)}`);
	const anon = (await collect(hub.listModels({ ...A, search: { owner: ORG } }))).map((x) => x.name);
	assert.ok(!anon.includes(PRIVATE_REPO), `anonymous listing of ${ORG} shows the private repo: ${short(anon)}`);
	const other = (await collect(hub.listModels({ ...A, accessToken: TOKEN_OTHER, search: { owner: ORG } }))).map((x) => x.name);
	assert.ok(!other.includes(PRIVATE_REPO), `non-member listing of ${ORG} shows the private repo: ${short(other)}`);
	const ds = (await collect(hub.listDatasets({ ...WA, search: { owner: user } }))).map((x) => x.name);
	assert.ok(ds.includes(dataset().name), `listDatasets(owner=${user}): ${short(ds)}`);
}, { needs: ["upload1", "dataset"] });

check("deleteRepo (dataset) then repoExists is false", async () => {
	await hub.deleteRepo({ ...WA, repo: dataset() });
	assert.equal(await hub.repoExists({ ...WA, repo: dataset() }), false);
}, { needs: ["dataset"] });

// --- second server: multipart upload and paginated listings ------------------

const B = { hubUrl: HUB_URL_SMALL, fetch: tfetch, accessToken: TOKEN };
const skipSmall = () => (HUB_URL_SMALL ? false : "HUB_URL_SMALL not set");
const mpRepo = () => ({ type: "model", name: `${user}/conf-multipart-${rid}` });
const pgRepo = () => ({ type: "dataset", name: `${user}/conf-pages-${rid}` });
const mpExact = makeFile("exact-20MiB.bin", randomBytes(20 * MiB));
const mpOdd = makeFile("odd-13MiB.bin", randomBytes(13 * MiB + 12345));
const mpSmall = makeFile("README.md", `# multipart test ${rid}\n`);
mpExact.lfs = mpOdd.lfs = true;
const pageFiles = [
	...Array.from({ length: 4 }, (_, i) => makeFile(`p/a/f${i}.txt`, `a${i} ${rid}\n`)),
	...Array.from({ length: 2 }, (_, i) => makeFile(`p/b/g${i}.txt`, `b${i} ${rid}\n`)),
	...Array.from({ length: 7 }, (_, i) => makeFile(`flat/h${i}.txt`, `h${i} ${rid}\n`)),
];

check("multipart: uploadFiles of a small file and 20 MiB and 13 MiB files with a small --lfs-chunk-size", async () => {
	await hub.createRepo({ ...B, repo: mpRepo() });
	const seq = await maxSeq(HUB_URL_SMALL);
	const before = trace.length;
	const out = await hub.uploadFiles({ ...B, repo: mpRepo(), files: asUpload([mpSmall, mpExact, mpOdd]), commitTitle: "Multipart upload", useXet: false });
	assert.match(out?.commit?.oid ?? "", /^[0-9a-f]{40}$/);
	state.mp = { seq, batch: trace.slice(before).find((r) => /\/info\/lfs\/objects\/batch$/.test(r.url))?.json };
}, { server: HUB_URL_SMALL, skip: skipSmall, needs: ["user"] });

check("multipart: batch answer has chunk_size and ceil(size/chunk) numbered part URLs", async () => {
	const batch = state.mp.batch;
	assert.ok(batch?.objects, "no LFS batch answer recorded");
	for (const f of [mpExact, mpOdd]) {
		const obj = batch.objects.find((o) => o.oid === f.sha256);
		const header = obj?.actions?.upload?.header ?? {};
		assert.equal(header.chunk_size, String(SMALL_CHUNK), `${f.path}: chunk_size in ${short(obj)}`);
		const parts = Object.keys(header).filter((k) => /^[0-9]+$/.test(k));
		assert.equal(parts.length, Math.ceil(f.size / SMALL_CHUNK), `${f.path}: number of parts`);
	}
}, { server: HUB_URL_SMALL, needs: ["mp"] });

check("multipart: server log shows every part PUT (2xx, no Authorization) and a completion POST", async () => {
	const log = (await adminLog(HUB_URL_SMALL)).filter((r) => state.mp.seq === null || Number(r.seq) > state.mp.seq);
	for (const f of [mpExact, mpOdd]) {
		const upload = state.mp.batch.objects.find((o) => o.oid === f.sha256).actions.upload;
		const parts = Object.keys(upload.header).filter((k) => /^[0-9]+$/.test(k)).sort((x, y) => Number(x) - Number(y));
		for (const p of parts) {
			const u = new URL(upload.header[p]);
			const idx = Number(p) - 1;
			const want = Math.min(SMALL_CHUNK, f.size - idx * SMALL_CHUNK);
			const hit = log.filter((r) => r.method === "PUT" && r.path === u.pathname && queryMatches(r, u.href));
			assert.ok(hit.length >= 1, `${f.path} part ${p}: no PUT ${u.pathname}${u.search} in the server log`);
			assert.ok(hit.some((r) => r.status >= 200 && r.status < 300), `${f.path} part ${p}: ${short(hit.map(fmtLog))}`);
			assert.ok(hit.every((r) => !r.auth), `${f.path} part ${p}: the part PUT carried Authorization`);
			if (hit.length === 1 && logBytes(hit[0]) !== null) assert.equal(logBytes(hit[0]), want, `${f.path} part ${p}: bytes received`);
		}
		const c = new URL(upload.href);
		const done = log.filter((r) => r.method === "POST" && r.path === c.pathname && queryMatches(r, c.href));
		assert.ok(done.some((r) => r.status >= 200 && r.status < 300), `${f.path}: no 2xx completion POST ${c.pathname}${c.search}: ${short(done.map(fmtLog))}`);
	}
}, { server: HUB_URL_SMALL, needs: ["mp"] });
function logBytes(r) {
	const n = Number(r.bytes);
	return Number.isFinite(n) && n > 0 ? n : null;
}

check("multipart: listFiles and downloads of the multipart objects match", async () => {
	const entries = await collect(hub.listFiles({ ...B, repo: mpRepo() }));
	const byPath = new Map(entries.map((e) => [e.path, e]));
	for (const f of [mpSmall, mpExact, mpOdd]) {
		checkEntry(byPath.get(f.path), f);
		const blob = await hub.downloadFile({ ...B, repo: mpRepo(), path: f.path });
		if (!f.lfs) {
			assert.equal(sha256(Buffer.from(await blob.arrayBuffer())), f.sha256, `${f.path}: sha256`);
			continue;
		}
		assert.equal(sha256(Buffer.from(await blob.arrayBuffer())), f.sha256, `${f.path}: sha256`);
		const mid = Buffer.from(await blob.slice(SMALL_CHUNK - 10, SMALL_CHUNK + 10).arrayBuffer());
		assert.ok(mid.equals(f.buf.subarray(SMALL_CHUNK - 10, SMALL_CHUNK + 10)), `${f.path}: bytes across the first part boundary`);
	}
}, { server: HUB_URL_SMALL, needs: ["mp"] });

check(`pagination: recursive listFiles over ${SMALL_PAGE}-entry pages returns every entry once`, async () => {
	await hub.createRepo({ ...B, repo: pgRepo() });
	await hub.uploadFiles({ ...B, repo: pgRepo(), files: asUpload(pageFiles), commitTitle: "Many files", useXet: false });
	const before = trace.length;
	const entries = await collect(hub.listFiles({ ...B, repo: pgRepo(), recursive: true }));
	const pages = trace.slice(before).filter((r) => r.url.includes("/tree/"));
	const paths = entries.map((e) => e.path);
	const want = [".gitattributes", "flat", "p", "p/a", "p/b", ...pageFiles.map((f) => f.path)].sort();
	assert.deepEqual([...paths].sort(), want, `entries (pages: ${short(pages.map((p) => [p.url, p.headers?.link]))})`);
	assert.ok(pages.length >= Math.ceil(want.length / SMALL_PAGE), `only ${pages.length} page requests for ${want.length} entries`);
	assert.ok(pages.slice(1).every((p) => /[?&]cursor=/.test(p.url)), `next pages must carry a cursor: ${short(pages.map((p) => p.url))}`);
	const byPath = new Map(entries.map((e) => [e.path, e]));
	for (const f of pageFiles) checkEntry(byPath.get(f.path), f);
	state.pages = true;
}, { server: HUB_URL_SMALL, skip: skipSmall, needs: ["user"] });

check("pagination: non-recursive listFiles of a 7-file folder over several pages", async () => {
	const before = trace.length;
	const entries = await collect(hub.listFiles({ ...B, repo: pgRepo(), path: "flat" }));
	assert.deepEqual(entries.map((e) => e.path).sort(), pageFiles.filter((f) => f.path.startsWith("flat/")).map((f) => f.path).sort());
	const pages = trace.slice(before).filter((r) => r.url.includes("/tree/"));
	assert.ok(pages.length >= Math.ceil(7 / SMALL_PAGE), `page requests: ${pages.length}`);
}, { server: HUB_URL_SMALL, needs: ["pages"] });

// --- global -----------------------------------------------------------------

for (const [label, base, skip] of [["main", HUB_URL, false], ["small", HUB_URL_SMALL, skipSmall]]) {
	check(`server log (${label}): CDN requests seen, none carried Authorization`, async () => {
		const log = await adminLog(base);
		const cdn = log.filter((r) => r.origin === "cdn");
		assert.ok(cdn.length > 0, "no request reached the CDN origin");
		const leaked = cdn.filter((r) => r.auth);
		assert.deepEqual(leaked.map(fmtLog), [], "CDN requests with Authorization");
		const bad = log.filter((r) => typeof r.auth !== "boolean" || !["api", "cdn"].includes(r.origin));
		assert.deepEqual(bad.slice(0, 5).map(short), [], "log records must have auth (bool) and origin (api|cdn)");
		console.log(`#   ${log.length} requests logged, ${cdn.length} on the CDN origin`);
	}, { server: base || HUB_URL, skip });
}

const failed = await runAll();
process.exit(failed ? 1 : 0);
