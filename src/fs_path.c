/*
 * The mount's path grammar.  See fs_path.h.
 *
 * The parser walks the path one component at a time, the way lookups reach
 * it, and keeps no state outside @out.  A branch named "refs" cannot be
 * written as NS/REPO/refs (that name is the group of special refs); it is
 * still reachable as NS/REPO@refs.
 */
#include "config.h"

#include "fs_path.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Copies the next component of *@p into @buf (size @size) and advances *@p
 * past it and its '/'.  Returns the component's length, -ENOENT for an empty
 * component, -ENAMETOOLONG when it does not fit. */
static int fs_path_next(const char **p, char *buf, size_t size)
{
	const char *end = strchr(*p, '/');
	size_t len = end ? (size_t)(end - *p) : strlen(*p);

	if (len == 0)
		return -ENOENT;
	if (len >= size)
		return -ENAMETOOLONG;
	memcpy(buf, *p, len);
	buf[len] = '\0';
	*p += len;
	if (**p == '/')
		(*p)++;
	return (int)len;
}

/* Decodes a revision segment into out->rev. */
static int fs_path_set_rev(struct fs_path *out, const char *segment)
{
	int err;
	char *rev = hub_revision_decode(segment, &err);

	if (!rev)
		return err;
	/* hub_revision_decode() bounds the length by HUB_REV_MAX. */
	strcpy(out->rev, rev);
	free(rev);
	return 0;
}

static bool fs_path_all_digits(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return false;
	return true;
}

/* Parses what follows "NS/REPO/" when the next component is "refs". */
static int fs_path_refs(const char **p, struct fs_path *out)
{
	/* "refs/" GROUP "/" NAME must fit in out->rev. */
	char group[sizeof("convert")], name[HUB_REV_MAX + 1 - sizeof("refs/convert/")];
	int rc;

	if (!**p) {
		out->kind = FS_PATH_REFS;
		strcpy(out->rev, "refs");
		return 0;
	}
	rc = fs_path_next(p, group, sizeof(group));
	if (rc == -ENAMETOOLONG)
		return -ENOENT;
	if (rc < 0)
		return rc;
	if (strcmp(group, "pr") != 0 && strcmp(group, "convert") != 0)
		return -ENOENT;
	if (!**p) {
		out->kind = FS_PATH_REFS;
		snprintf(out->rev, sizeof(out->rev), "refs/%s", group);
		return 0;
	}
	rc = fs_path_next(p, name, sizeof(name));
	if (rc < 0)
		return rc;
	if (strcmp(group, "pr") == 0 ? !fs_path_all_digits(name) : !hub_name_valid(name))
		return -ENOENT;
	snprintf(out->rev, sizeof(out->rev), "refs/%s/%s", group, name);
	out->kind = FS_PATH_REVISION;
	return 0;
}

/* Parses the rest of a path, @p, as a path inside a revision's tree into
 * out->path: FS_PATH_ENTRY. */
static int fs_path_entry(const char *p, struct fs_path *out)
{
	if (strlen(p) > HUB_PATH_MAX)
		return -ENAMETOOLONG;
	if (!hub_repo_path_valid(p)) {
		/* Tell a too-long component from a bad one. */
		for (const char *c = p; *c;) {
			size_t n = strcspn(c, "/");

			if (n > HUB_PATH_COMPONENT_MAX)
				return -ENAMETOOLONG;
			c += n;
			if (*c == '/')
				c++;
		}
		return -ENOENT;
	}
	out->path = p;
	out->kind = FS_PATH_ENTRY;
	return 0;
}

/* Whether @s is a full commit id as huggingface_hub writes it: 40 lowercase
 * hex digits (its REGEX_COMMIT_HASH). */
static bool fs_path_commit_hex(const char *s)
{
	size_t i;

	for (i = 0; i < HUB_COMMIT_LEN; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return s[i] == '\0';
}

/* Parses "TYPE--NS--REPO", a repo folder of huggingface_hub's cache
 * (repo_folder_name()).  Names cannot hold "--" (hub_name_valid()), so the
 * split is unambiguous; a folder without a namespace ("models--gpt2") names
 * nothing here. */
static int fs_path_hfc_repo(const char *seg, struct fs_path *out)
{
	static const struct {
		const char *prefix;
		enum hub_repo_type type;
	} types[] = {
		{ "models--", HUB_REPO_MODEL },
		{ "datasets--", HUB_REPO_DATASET },
		{ "spaces--", HUB_REPO_SPACE },
	};
	const char *ns = NULL, *sep;

	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		if (!strncmp(seg, types[i].prefix, strlen(types[i].prefix))) {
			ns = seg + strlen(types[i].prefix);
			out->type = types[i].type;
			break;
		}
	}
	if (!ns)
		return -ENOENT;
	sep = strstr(ns, "--");
	if (!sep || (size_t)(sep - ns) > HUB_NAME_MAX || strlen(sep + 2) > HUB_NAME_MAX)
		return -ENOENT;
	memcpy(out->ns, ns, (size_t)(sep - ns));
	out->ns[sep - ns] = '\0';
	strcpy(out->repo, sep + 2);
	if (!hub_name_valid(out->ns) || !hub_name_valid(out->repo))
		return -ENOENT;
	out->kind = FS_PATH_HFC_REPO;
	return 0;
}

/* Parses what follows ".hf-cache/": huggingface_hub's cache layout. */
static int fs_path_hfc(const char *p, struct fs_path *out)
{
	char seg[sizeof("datasets--") + 2 * HUB_NAME_MAX + 2];
	int rc;

	out->kind = FS_PATH_HFC;
	if (!*p)
		return 0;
	rc = fs_path_next(&p, seg, sizeof(seg));
	if (rc == -ENAMETOOLONG)
		return -ENOENT; /* longer than any repo folder */
	if (rc < 0)
		return rc;
	rc = fs_path_hfc_repo(seg, out);
	if (rc || !*p)
		return rc;

	rc = fs_path_next(&p, seg, sizeof(seg));
	if (rc < 0)
		return rc == -ENAMETOOLONG ? -ENOENT : rc;
	out->pinned = true;
	if (!strcmp(seg, "refs")) {
		/* refs/NAME: huggingface_hub joins "refs" and the revision as
		 * given, so "refs/pr/1" is refs/refs/pr/1.  A commit id is
		 * never a ref file. */
		out->kind = FS_PATH_HFC_REF;
		if (strlen(p) > HUB_REV_MAX)
			return -ENAMETOOLONG;
		if (*p && (!hub_revision_valid(p) || fs_path_commit_hex(p)))
			return -ENOENT;
		strcpy(out->rev, p);
		return 0;
	}
	if (!strcmp(seg, "snapshots") || !strcmp(seg, ".no_exist")) {
		bool snapshots = seg[0] == 's';

		out->kind = snapshots ? FS_PATH_HFC_SNAPSHOTS : FS_PATH_HFC_NOEXIST;
		if (!*p)
			return 0;
		rc = fs_path_next(&p, seg, sizeof(seg));
		if (rc < 0)
			return rc == -ENAMETOOLONG ? -ENOENT : rc;
		if (!fs_path_commit_hex(seg))
			return -ENOENT;
		strcpy(out->rev, seg);
		if (snapshots)
			out->kind = FS_PATH_REVISION;
		if (!*p)
			return 0;
		rc = fs_path_entry(p, out);
		if (!snapshots)
			out->kind = FS_PATH_HFC_NOEXIST;
		return rc;
	}
	if (!strcmp(seg, "trees")) {
		/* trees/COMMIT.json, huggingface_hub's tree listing cache */
		size_t len = strlen(p);

		out->kind = FS_PATH_HFC_TREES;
		if (!*p)
			return 0;
		if (len != HUB_COMMIT_LEN + 5 || strcmp(p + HUB_COMMIT_LEN, ".json"))
			return -ENOENT;
		memcpy(out->rev, p, HUB_COMMIT_LEN);
		out->rev[HUB_COMMIT_LEN] = '\0';
		return fs_path_commit_hex(out->rev) ? 0 : -ENOENT;
	}
	/* blobs/, .locks/, CACHEDIR.TAG...: absent (see fs_hfcache.h) */
	return -ENOENT;
}

int fs_path_parse(const char *path, struct fs_path *out)
{
	char seg[3 * HUB_REV_MAX + 1];
	const char *p = path;
	const char *at;
	int rc;

	memset(out, 0, sizeof(*out));
	out->path = "";
	out->kind = FS_PATH_ROOT;
	out->type = HUB_REPO_MODEL;
	while (*p == '/')
		p++;
	if (strlen(p) > HUB_PATH_MAX + 3 * HUB_REV_MAX + 2 * HUB_NAME_MAX + 16)
		return -ENAMETOOLONG;
	if (!*p)
		return 0;

	/* The first component: "me", a type, or a namespace of models. */
	rc = fs_path_next(&p, seg, sizeof(seg));
	if (rc < 0)
		return rc;
	if (strcmp(seg, FS_PATH_HFC_NAME) == 0)
		return fs_path_hfc(p, out);
	if (strcmp(seg, FS_PATH_ME_NAME) == 0) {
		out->kind = FS_PATH_ME;
		/* A symlink has no children. */
		return *p ? -ENOTDIR : 0;
	}
	if (strcmp(seg, "datasets") == 0 || strcmp(seg, "spaces") == 0) {
		out->type = seg[0] == 'd' ? HUB_REPO_DATASET : HUB_REPO_SPACE;
		out->kind = FS_PATH_TYPE;
		if (!*p)
			return 0;
		rc = fs_path_next(&p, seg, sizeof(seg));
		if (rc < 0)
			return rc;
	}
	if (strlen(seg) > HUB_NAME_MAX)
		return -ENAMETOOLONG;
	if (!hub_name_valid(seg))
		return -ENOENT;
	strcpy(out->ns, seg);
	out->kind = FS_PATH_NAMESPACE;
	if (!*p)
		return 0;

	/* The repo, maybe pinned with "@REV". */
	rc = fs_path_next(&p, seg, sizeof(seg));
	if (rc < 0)
		return rc;
	at = strchr(seg, '@');
	if (at) {
		if ((size_t)(at - seg) > HUB_NAME_MAX)
			return -ENAMETOOLONG;
		memcpy(out->repo, seg, (size_t)(at - seg));
		out->repo[at - seg] = '\0';
		if (!hub_name_valid(out->repo))
			return -ENOENT;
		rc = fs_path_set_rev(out, at + 1);
		if (rc < 0)
			return rc;
		out->pinned = true;
		out->kind = FS_PATH_REVISION;
	} else {
		if (strlen(seg) > HUB_NAME_MAX)
			return -ENAMETOOLONG;
		if (!hub_name_valid(seg))
			return -ENOENT;
		strcpy(out->repo, seg);
		out->kind = FS_PATH_REPO;
		if (!*p)
			return 0;
		/* A revision: "refs/..." or one (maybe %-encoded) segment. */
		if (strncmp(p, "refs", 4) == 0 && (p[4] == '/' || p[4] == '\0')) {
			p += 4;
			if (*p == '/')
				p++;
			rc = fs_path_refs(&p, out);
			if (rc < 0 || out->kind == FS_PATH_REFS)
				return rc;
		} else {
			rc = fs_path_next(&p, seg, sizeof(seg));
			if (rc < 0)
				return rc;
			rc = fs_path_set_rev(out, seg);
			if (rc < 0)
				return rc;
			out->kind = FS_PATH_REVISION;
		}
	}
	if (!*p)
		return 0;

	return fs_path_entry(p, out);
}
