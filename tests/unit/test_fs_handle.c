/* Unit tests: handles by number (src/fs_handle.c), a release racing a request. */
#include "config.h"

#include <pthread.h>
#include <stdlib.h>

#include "fs_handle.h"
#include "tap.h"

static int freed;

static void count_free(void *ctx, void *obj)
{
	(void)ctx;
	free(obj);
	freed++;
}

struct racer {
	struct fs_handles *t;
	uint64_t key;
	int gets;
};

static void *hammer(void *arg)
{
	struct racer *r = arg;

	for (int i = 0; i < 100000; i++) {
		int *obj = fs_handle_get(r->t, r->key);

		if (!obj)
			break;
		(*obj)++; /* ASan reports any use after free */
		r->gets++;
		fs_handle_put(r->t, r->key, obj);
	}
	return NULL;
}

int main(void)
{
	struct fs_handles *t = fs_handles_new(count_free, NULL);
	uint64_t a, b;
	int *obj;

	if (!t)
		return 99;
	a = fs_handle_add(t, calloc(1, sizeof(int)));
	b = fs_handle_add(t, calloc(1, sizeof(int)));
	tap_ok(a && b && a != b, "keys are distinct and not 0");
	obj = fs_handle_get(t, a);
	tap_ok(obj != NULL, "a handle is found by its key");
	fs_handle_release(t, a);
	tap_ok(freed == 0, "released while a request holds it: not freed");
	tap_ok(fs_handle_get(t, a) == NULL, "a released handle is not found");
	*obj = 42;
	fs_handle_put(t, a, obj);
	tap_ok(freed == 1, "freed by the request's last put");
	tap_ok(fs_handle_get(t, 12345) == NULL, "an unknown key finds nothing");

	{
		struct racer r = { t, b, 0 };
		pthread_t th;

		pthread_create(&th, NULL, hammer, &r);
		while (!__atomic_load_n(&r.gets, __ATOMIC_RELAXED))
			;
		fs_handle_release(t, b);
		pthread_join(th, NULL);
		tap_ok(freed == 2 && fs_handle_get(t, b) == NULL, "a release racing requests frees once, after them");
	}
	fs_handle_add(t, calloc(1, sizeof(int)));
	fs_handles_free(t);
	tap_ok(freed == 3, "freeing the table frees what is still open");
	return tap_done();
}
