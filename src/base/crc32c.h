/* crc32c.h - CRC-32C (Castagnoli), the checksum of every stored record.
 * Uses the SSE4.2 instruction when the CPU has it. */
#ifndef TIDE_CRC32C_H
#define TIDE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continues crc over buf; start with crc = 0. */
uint32_t crc32c(uint32_t crc, const void *buf, size_t len);

#endif
