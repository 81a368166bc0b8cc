// The official JavaScript client, @huggingface/hub, as a second party of the
// mount tests (tests/mount/test_write_faults.py): it downloads what hubfs
// committed and commits beside hubfs.
//
//   node js_client.mjs download HUB_URL REPO PATH REVISION
//       prints "SHA256 SIZE" of the file's bytes (streamed, not held in memory),
//       or "missing" when the client finds no such file
//   node js_client.mjs upload HUB_URL REPO PATH LOCAL_FILE TITLE
//       commits LOCAL_FILE as PATH on main (no xet) and prints the commit id
//
// The token comes from HF_TOKEN (never from the command line).  The client is
// loaded from HUBFS_NODE_MODULES, else from tests/conformance/node_modules.
// Exit status 0 on success, 1 on an error (printed on stderr), 2 on bad usage.
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = process.env.HUBFS_NODE_MODULES || path.join(here, "..", "conformance", "node_modules");
const require = createRequire(pathToFileURL(path.join(modules, "x.js")));
const hub = await import(pathToFileURL(require.resolve("@huggingface/hub")));

const [cmd, hubUrl, repo, target, ...rest] = process.argv.slice(2);
const accessToken = process.env.HF_TOKEN || undefined;
const usage = () => {
	console.error("usage: js_client.mjs download HUB_URL REPO PATH REVISION\n" +
		"       js_client.mjs upload HUB_URL REPO PATH LOCAL_FILE TITLE");
	process.exit(2);
};

if (!hubUrl || !repo || !target)
	usage();
try {
	if (cmd === "download" && rest.length === 1) {
		const blob = await hub.downloadFile({ hubUrl, accessToken, repo: { type: "model", name: repo }, path: target,
			revision: rest[0], xet: false });
		if (!blob) {
			console.log("missing");
		} else {
			const h = createHash("sha256");
			let size = 0;
			for await (const chunk of blob.stream()) {
				h.update(chunk);
				size += chunk.length;
			}
			console.log(`${h.digest("hex")} ${size}`);
		}
	} else if (cmd === "upload" && rest.length === 2) {
		const content = new Blob([await readFile(rest[0])]);
		const out = await hub.uploadFile({ hubUrl, accessToken, repo: { type: "model", name: repo },
			file: { path: target, content }, commitTitle: rest[1], useXet: false });
		console.log(out?.commit?.oid ?? "no commit");
	} else {
		usage();
	}
} catch (e) {
	console.error(`js_client.mjs ${cmd}: ${e?.statusCode ?? ""} ${e?.message ?? e}`);
	process.exit(1);
}
