/* Unit tests: CRC32C (cache/cache_crc.c): known vectors, hardware against
 * software on random buffers of every alignment, chaining, and a speed
 * figure for the record. */
#include "config.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache_crc.h"
#include "tap.h"

struct vector {
	const char *data;
	size_t len;
	uint32_t crc; /* RFC 3720 B.4 and the usual check value */
};

static void test_vectors(void)
{
	static unsigned char zeros[32], ones[32], inc[32], dec[32];
	const struct vector v[] = {
	    {"", 0, 0},
	    {"123456789", 9, 0xe3069283u},
	    {"a", 1, 0xc1d04330u},
	    {(const char *)zeros, 32, 0x8a9136aau},
	    {(const char *)ones, 32, 0x62a8ab43u},
	    {(const char *)inc, 32, 0x46dd794eu},
	    {(const char *)dec, 32, 0x113fdb5cu},
	};

	memset(ones, 0xff, sizeof(ones));
	for (int i = 0; i < 32; i++) {
		inc[i] = (unsigned char)i;
		dec[i] = (unsigned char)(31 - i);
	}
	tap_diag("crc32c in %s", cache_crc32c_hardware() ? "hardware (sse4.2)" : "software");
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		uint32_t hw = cache_crc32c(0, v[i].data, v[i].len);
		uint32_t sw = cache_crc32c_soft(0, v[i].data, v[i].len);

		tap_ok(hw == v[i].crc && sw == v[i].crc, "vector %zu: 0x%08x (got 0x%08x, 0x%08x)",
		       i, v[i].crc, hw, sw);
	}
}

/* Random buffers of many lengths at every alignment: both ways agree, and
 * a CRC carried over a split equals the one-shot CRC. */
static void test_random(void)
{
	size_t max = 3 * 4096 * 3 + 333;
	unsigned char *buf = malloc(max + 8);
	bool same = true, chain = true;

	srand(7);
	for (size_t i = 0; i < max + 8; i++)
		buf[i] = (unsigned char)rand();
	for (int round = 0; round < 400; round++) {
		size_t len = round < 64 ? (size_t)round : (size_t)rand() % max;
		size_t align = (size_t)round % 8, cut = len ? (size_t)rand() % len : 0;
		const unsigned char *p = buf + align;
		uint32_t hw = cache_crc32c(0, p, len), sw = cache_crc32c_soft(0, p, len);

		same &= hw == sw;
		chain &= cache_crc32c(cache_crc32c(0, p, cut), p + cut, len - cut) == hw;
	}
	tap_ok(same, "hardware and software agree on 400 random buffers");
	tap_ok(chain, "a CRC continued over a split equals the one-shot CRC");
	free(buf);
}

static double seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_speed(void)
{
	size_t len = 1u << 20;
	unsigned char *buf = aligned_alloc(4096, len);
	uint32_t crc = 0;
	double t;

	memset(buf, 0x5a, len);
	t = seconds();
	for (int i = 0; i < 256; i++)
		crc = cache_crc32c(crc, buf, len);
	t = seconds() - t;
	tap_diag("cache_crc32c: %.1f GB/s", 256.0 * (double)len / t / 1e9);
	t = seconds();
	crc ^= cache_crc32c_soft(0, buf, len);
	t = seconds() - t;
	tap_diag("cache_crc32c_soft: %.1f GB/s", (double)len / t / 1e9);
	tap_ok(crc != 0x12345678u, "speed measured");
	free(buf);
}

int main(void)
{
	test_vectors();
	test_random();
	test_speed();
	return tap_done();
}
