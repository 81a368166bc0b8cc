/*
 * CRC32C, in hardware where the processor has it, in software otherwise.
 * See cache_crc.h.
 *
 * Both versions work on the raw register (no inversion): the public
 * functions invert on entry and exit.  The hardware version runs three
 * independent streams over consecutive blocks (the crc32 instruction has a
 * latency of 3 cycles and a throughput of 1) and joins them by multiplying
 * by x^(8 * block) modulo the polynomial, as zlib's crc32_combine does.
 *
 * The tables and the processor check are set up once (pthread_once).
 */
#include "config.h"

#include <pthread.h>
#include <string.h>

#include "cache_crc.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <nmmintrin.h>
#define CRC_X86 1
#endif

/* The polynomial, reflected. */
#define CRC_POLY 0x82f63b78u
/* Bytes of each of the three interleaved streams. */
#define CRC_BLOCK 4096

static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static uint32_t crc_table[8][256]; /* written once, then constant */
static bool crc_hw;		   /* written once, then constant */
static uint32_t crc_block_shift;   /* x^(8 * CRC_BLOCK) mod P; constant */

/* a * b modulo the polynomial (reflected: x^0 is the top bit). */
static uint32_t crc_multmodp(uint32_t a, uint32_t b)
{
	uint32_t m = 1u << 31, p = 0;

	for (;;) {
		if (a & m) {
			p ^= b;
			if ((a & (m - 1)) == 0)
				break;
		}
		m >>= 1;
		b = b & 1 ? (b >> 1) ^ CRC_POLY : b >> 1;
	}
	return p;
}

/* x^(8 * @n) modulo the polynomial. */
static uint32_t crc_x8n(uint64_t n)
{
	uint32_t p = 1u << 31, sq = 1u << 23; /* 1 and x^8 */

	while (n) {
		if (n & 1)
			p = crc_multmodp(sq, p);
		sq = crc_multmodp(sq, sq);
		n >>= 1;
	}
	return p;
}

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;

		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ CRC_POLY : c >> 1;
		crc_table[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc_table[t][i] =
			    (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
	crc_block_shift = crc_x8n(CRC_BLOCK);
#ifdef CRC_X86
	__builtin_cpu_init();
	crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc_soft(uint32_t c, const unsigned char *p, size_t len)
{
	while (len && ((uintptr_t)p & 7)) {
		c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xff];
		len--;
	}
	while (len >= 8) {
		uint64_t w;

		memcpy(&w, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
		w = __builtin_bswap64(w);
#endif
		w ^= c;
		c = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^
		    crc_table[5][(w >> 16) & 0xff] ^ crc_table[4][(w >> 24) & 0xff] ^
		    crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
		    crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
		p += 8;
		len -= 8;
	}
	while (len--)
		c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xff];
	return c;
}

#ifdef CRC_X86
__attribute__((target("sse4.2"))) static uint32_t crc_hard(uint32_t c, const unsigned char *p,
							   size_t len)
{
	uint64_t c0 = c;

	while (len && ((uintptr_t)p & 7)) {
		c0 = _mm_crc32_u8((uint32_t)c0, *p++);
		len--;
	}
	while (len >= 3 * CRC_BLOCK) {
		uint64_t c1 = 0, c2 = 0;

		for (size_t i = 0; i < CRC_BLOCK; i += 8) {
			uint64_t w0, w1, w2;

			memcpy(&w0, p + i, 8);
			memcpy(&w1, p + CRC_BLOCK + i, 8);
			memcpy(&w2, p + 2 * CRC_BLOCK + i, 8);
			c0 = _mm_crc32_u64(c0, w0);
			c1 = _mm_crc32_u64(c1, w1);
			c2 = _mm_crc32_u64(c2, w2);
		}
		c0 = crc_multmodp(crc_block_shift, (uint32_t)c0) ^ (uint32_t)c1;
		c0 = crc_multmodp(crc_block_shift, (uint32_t)c0) ^ (uint32_t)c2;
		p += 3 * CRC_BLOCK;
		len -= 3 * CRC_BLOCK;
	}
	while (len >= 8) {
		uint64_t w;

		memcpy(&w, p, 8);
		c0 = _mm_crc32_u64(c0, w);
		p += 8;
		len -= 8;
	}
	while (len--)
		c0 = _mm_crc32_u8((uint32_t)c0, *p++);
	return (uint32_t)c0;
}
#endif

uint32_t cache_crc32c(uint32_t crc, const void *p, size_t len)
{
	pthread_once(&crc_once, crc_init);
#ifdef CRC_X86
	if (crc_hw)
		return ~crc_hard(~crc, p, len);
#endif
	return ~crc_soft(~crc, p, len);
}

uint32_t cache_crc32c_soft(uint32_t crc, const void *p, size_t len)
{
	pthread_once(&crc_once, crc_init);
	return ~crc_soft(~crc, p, len);
}

bool cache_crc32c_hardware(void)
{
	pthread_once(&crc_once, crc_init);
	return crc_hw;
}
