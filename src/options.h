/*
 * Settings of a mount that come from the environment: endpoint, token, cache
 * directory, and the parsing of sizes and booleans as users write them.
 * Pure functions of their inputs (the environment and files); thread-safe.
 */
#ifndef HUBFS_OPTIONS_H
#define HUBFS_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>

/* Parses "10G", "512M", "1.5T", "4096" (K/M/G/T are powers of 1024, an
 * optional trailing "B"/"iB" is accepted).  Returns 0 or -EINVAL. */
int options_parse_size(const char *s, uint64_t *out);

/* True for "1", "on", "yes", "true" in any case (the Hub clients' rule). */
bool options_truthy(const char *s);

/* The endpoint: @given, else $HF_ENDPOINT, else https://huggingface.co,
 * without trailing '/'.  Caller frees. */
char *options_endpoint(const char *given);

/* The token: from @token_file if given (an error if unreadable), else
 * $HF_TOKEN, else the file $HF_TOKEN_PATH, else $HF_HOME/token, else
 * ~/.cache/huggingface/token.  Whitespace and newlines are trimmed; an empty
 * token is no token.  Returns 0 with *@out = the token (caller frees, wipe it
 * with options_token_free()) or NULL when there is none; -errno when
 * @token_file cannot be read.  *@source (may be NULL) names where it came
 * from (static string, for messages: never the token itself). */
int options_token(const char *token_file, char **out, const char **source);

/* Wipes and frees a token; NULL is a no-op. */
void options_token_free(char *token);

/* Wipes the token variables (HF_TOKEN, HUGGING_FACE_HUB_TOKEN) out of the
 * environment: their bytes are zeroed where they are (also what
 * /proc/PID/environ shows) and the variables removed, so that no process
 * started later inherits them.  Not thread-safe: call before any thread. */
void options_token_env_scrub(void);

/* The cache directory: @given, else $XDG_CACHE_HOME/hubfs, else
 * ~/.cache/hubfs.  Caller frees; NULL when no home can be found. */
char *options_cache_dir(const char *given);

/* The cache directory of huggingface_hub, found as it finds it:
 * $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE (its old name), else
 * $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
 * ~/.cache/huggingface/hub; a leading "~/" is the home directory.  Empty
 * variables count as unset.  Whether it exists is not checked.  Caller
 * frees; NULL when no home can be found (or out of memory). */
char *options_hf_cache_dir(void);

#endif
