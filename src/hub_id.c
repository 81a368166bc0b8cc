/*
 * Hub identifier rules.  See hub_id.h.
 *
 * The Hub itself accepts only ASCII in repo names, so hub_name_valid() does
 * too, although huggingface_hub's regex is Unicode-aware.  Revisions and file
 * paths may hold any UTF-8.
 */
#include "config.h"

#include "hub_id.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

const char *hub_repo_type_api(enum hub_repo_type type)
{
	switch (type) {
	case HUB_REPO_DATASET:
		return "datasets";
	case HUB_REPO_SPACE:
		return "spaces";
	case HUB_REPO_MODEL:
		break;
	}
	return "models";
}

const char *hub_repo_type_prefix(enum hub_repo_type type)
{
	switch (type) {
	case HUB_REPO_DATASET:
		return "datasets/";
	case HUB_REPO_SPACE:
		return "spaces/";
	case HUB_REPO_MODEL:
		break;
	}
	return "";
}

static bool hub_is_word(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '_';
}

static bool hub_is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool hub_ends_with(const char *s, size_t len, const char *suffix)
{
	size_t n = strlen(suffix);

	return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

bool hub_name_valid(const char *name)
{
	size_t len = strnlen(name, HUB_NAME_MAX + 1);

	if (len == 0 || len > HUB_NAME_MAX)
		return false;
	if (!hub_is_word(name[0]) || !hub_is_word(name[len - 1]))
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = name[i];

		if (!hub_is_word(c) && c != '-' && c != '.')
			return false;
		if (i > 0 && (c == '-' || c == '.') && name[i - 1] == c)
			return false;
	}
	return !hub_ends_with(name, len, ".git");
}

bool hub_repo_id_valid(const char *id)
{
	const char *slash = strchr(id, '/');
	char ns[HUB_NAME_MAX + 1];
	size_t nslen;

	if (!slash)
		return false;
	nslen = (size_t)(slash - id);
	if (nslen == 0 || nslen > HUB_NAME_MAX)
		return false;
	memcpy(ns, id, nslen);
	ns[nslen] = '\0';
	return hub_name_valid(ns) && hub_name_valid(slash + 1);
}

bool hub_commit_id_valid(const char *s, bool allow_short)
{
	size_t len = strnlen(s, HUB_COMMIT_LEN + 1);

	if (len > HUB_COMMIT_LEN || len < (allow_short ? HUB_COMMIT_SHORT_MIN : HUB_COMMIT_LEN))
		return false;
	for (size_t i = 0; i < len; i++)
		if (!hub_is_hex(s[i]))
			return false;
	return true;
}

bool hub_revision_valid(const char *rev)
{
	size_t len = strnlen(rev, HUB_REV_MAX + 1);
	size_t comp = 0; /* start of the current component */

	if (len == 0 || len > HUB_REV_MAX)
		return false;
	if (strcmp(rev, "@") == 0 || rev[0] == '/' || rev[len - 1] == '/' || rev[len - 1] == '.')
		return false;
	if (strstr(rev, "..") || strstr(rev, "@{") || strstr(rev, "//"))
		return false;
	for (size_t i = 0; i <= len; i++) {
		unsigned char c = (unsigned char)rev[i];

		if (c == '/' || c == '\0') {
			if (rev[comp] == '.' || hub_ends_with(rev + comp, i - comp, ".lock"))
				return false;
			comp = i + 1;
			continue;
		}
		if (c < 0x20 || c == 0x7f || strchr(" ~^:?*[\\", c))
			return false;
	}
	return true;
}

bool hub_repo_path_valid(const char *path)
{
	size_t len = strnlen(path, HUB_PATH_MAX + 1);
	size_t comp = 0;

	if (len > HUB_PATH_MAX)
		return false;
	if (len == 0)
		return true;
	for (size_t i = 0; i <= len; i++) {
		unsigned char c = (unsigned char)path[i];
		size_t n;

		if (c != '/' && c != '\0') {
			if (c < 0x20 || c == 0x7f)
				return false;
			continue;
		}
		n = i - comp;
		if (n == 0 || n > HUB_PATH_COMPONENT_MAX)
			return false;
		if ((n == 1 && path[comp] == '.') || (n == 2 && !memcmp(path + comp, "..", 2)) ||
		    (n == 4 && !memcmp(path + comp, ".git", 4)))
			return false;
		comp = i + 1;
	}
	return true;
}

char *hub_revision_encode(const char *rev)
{
	return http_escape(rev, strlen(rev));
}

char *hub_revision_decode(const char *segment, int *err)
{
	int rc;
	char *rev;

	if (strlen(segment) > 3 * HUB_REV_MAX) {
		*err = -ENAMETOOLONG;
		return NULL;
	}
	rev = http_unescape(segment, &rc);
	if (!rev) {
		*err = rc == -ENOMEM ? -ENOMEM : -ENOENT;
		return NULL;
	}
	if (strlen(rev) > HUB_REV_MAX) {
		free(rev);
		*err = -ENAMETOOLONG;
		return NULL;
	}
	if (!hub_revision_valid(rev)) {
		free(rev);
		*err = -ENOENT;
		return NULL;
	}
	*err = 0;
	return rev;
}
