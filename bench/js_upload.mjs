// Uploads one file with the official client, as bench/upload_speed.py's reference.
//   node bench/js_upload.mjs HUB_URL TOKEN REPO PATH_IN_REPO LOCAL_FILE
// Prints the seconds the upload (preupload, LFS, commit) took.
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import path from "node:path";

const [hubUrl, token, repo, target, local] = process.argv.slice(2);
const modules = process.env.HUBFS_NODE_MODULES ||
	path.join(path.dirname(new URL(import.meta.url).pathname), "..", "tests", "conformance", "node_modules");
const require = createRequire(pathToFileURL(path.join(modules, "x.js")));
const hub = await import(pathToFileURL(require.resolve("@huggingface/hub")));
const t0 = performance.now();
await hub.uploadFiles({
	hubUrl, accessToken: token, repo: { type: "model", name: repo },
	files: [{ path: target, content: pathToFileURL(local) }],
	commitTitle: "bench upload", useXet: false,
});
console.log(((performance.now() - t0) / 1000).toFixed(3));
