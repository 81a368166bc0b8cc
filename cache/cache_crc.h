/*
 * CRC32C (Castagnoli, the polynomial of iSCSI, ext4 and btrfs metadata): the
 * per-chunk checksum of the blob cache (cache_blob.c), which catches bytes
 * that rotted in a blob file after they were written.  Not a proof of
 * content: that is the blob's id (cache_hash.h).
 *
 * On x86-64 with SSE4.2 the crc32 instruction does the work (three streams
 * interleaved, well over 10 GB/s); elsewhere a table-driven version
 * (slicing by 8, about 1-2 GB/s).  Both give the same values.
 *
 * Thread safety: every function may be called from any thread.
 */
#ifndef HUBFS_CACHE_CRC_H
#define HUBFS_CACHE_CRC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The CRC32C of @len bytes at @p following bytes whose CRC32C is @crc (0
 * for none): cache_crc32c(cache_crc32c(0, a, n), b, m) is the CRC32C of a
 * followed by b.  CRC32C("123456789") is 0xe3069283. */
uint32_t cache_crc32c(uint32_t crc, const void *p, size_t len);

/* The same, always in software (for tests and comparisons). */
uint32_t cache_crc32c_soft(uint32_t crc, const void *p, size_t len);

/* True if cache_crc32c() uses the processor's crc32 instruction. */
bool cache_crc32c_hardware(void);

#endif
