/* QEMU's "edu" PCI device (1234:11e8, hw/misc/edu.c), shared by the guest
 * helpers that drive it: its register map, finding it, BAR0 access and DMA.
 *
 * BAR0 holds the registers; the device owns a 4 KiB buffer at device address
 * EDU_BUF_ADDR, and a DMA copies between that buffer and a bus address about
 * 100 ms (virtual time) after it is started. A DMA that an IOMMU blocks still
 * "completes": the only evidence in the guest is data that did not change.
 *
 * How BAR0 gets mapped is the helper's business (vfio.h's vfio_region_map(),
 * or sysfs resource0); struct edu_bar only says how to reach it. edu_find()
 * bails out (KTAP "Bail out!", exit 2) when there is no such device, the rest
 * reports failure through return values. All functions are static inline. */
#ifndef PKVM_HARNESS_EDU_H
#define PKVM_HARNESS_EDU_H
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ktap.h"
#include "pci.h"

#define EDU_VENDOR 0x1234
#define EDU_DEVICE 0x11e8
#define EDU_ID 0x010000edu
#define EDU_BAR0_SIZE (1ul << 20)

#define EDU_REG_ID 0x00
#define EDU_REG_LIVENESS 0x04 /* reads back ~value written */
#define EDU_REG_DMA_SRC 0x80
#define EDU_REG_DMA_DST 0x88
#define EDU_REG_DMA_CNT 0x90
#define EDU_REG_DMA_CMD 0x98
#define EDU_REGS_END 0xa0

#define EDU_DMA_RUN 0x1
#define EDU_DMA_TO_RAM 0x2 /* device buffer -> RAM; clear: RAM -> buffer */
/* Command bit 2 (interrupt on completion) is never set: completion is polled. */

/* The device's DMA buffer: keep transfers inside it. */
#define EDU_BUF_ADDR 0x40000ull
#define EDU_BUF_SIZE 4096u

#define EDU_DMA_TIMEOUT_NS (5ull * 1000 * 1000 * 1000)
#define EDU_DMA_POLL_NS (1000 * 1000)

/* How to reach BAR0: through a mapping, or (map NULL) with pread/pwrite on a
 * VFIO device fd at the BAR0 region's offset. */
struct edu_bar {
	volatile uint8_t *map;
	int fd;
	uint64_t offset;
	char err[256]; /* why the last edu_dma() or BAR0 write failed */
};

static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void sleep_ns(long ns)
{
	struct timespec ts = { .tv_sec = 0, .tv_nsec = ns };

	nanosleep(&ts, NULL);
}

/* Orders CPU accesses to DMA buffers against the MMIO accesses that start a
 * DMA or observe its completion (what writel()/readl() barriers do). */
static inline void io_barrier(void)
{
#if defined(__aarch64__)
	__asm__ __volatile__("dmb osh" ::: "memory");
#else
	__sync_synchronize();
#endif
}

/* The edu at want ("dddd:bb:dd.f" or "bb:dd.f"), or with want NULL the
 * lowest-numbered one (a stable choice across runs). Its canonical BDF goes
 * into bdf and its requester ID (= SMMU StreamID) into *sid if not NULL.
 * Bails out if there is no such device. */
static inline void edu_find(const char *want, char *bdf, size_t len, unsigned int *sid)
{
	char found[64];

	if (!want) {
		if (!pci_find_lowest(EDU_VENDOR, EDU_DEVICE, found, sizeof(found))) {
			if (errno)
				ktap_bail("cannot list " PCI_DEVICES_DIR ": %s", strerror(errno));
			ktap_bail("no edu device (%04x:%04x) found in " PCI_DEVICES_DIR, EDU_VENDOR,
				  EDU_DEVICE);
		}
		want = found;
	}
	if (!pci_parse_bdf(want, bdf, len, NULL, sid))
		ktap_bail("bad BDF '%s'", want);
	if (!pci_is_device(bdf, EDU_VENDOR, EDU_DEVICE))
		ktap_bail("%s is not an edu device (or does not exist)", bdf);
}

static inline uint32_t edu_read32(const struct edu_bar *b, uint32_t off)
{
	uint32_t v = ~0u;

	if (b->map)
		return *(volatile uint32_t *)(b->map + off);
	if (pread(b->fd, &v, 4, (off_t)(b->offset + off)) != 4)
		return ~0u;
	return v;
}

static inline void edu_write32(struct edu_bar *b, uint32_t off, uint32_t v)
{
	if (b->map)
		*(volatile uint32_t *)(b->map + off) = v;
	else if (pwrite(b->fd, &v, 4, (off_t)(b->offset + off)) != 4)
		snprintf(b->err, sizeof(b->err), "BAR0 write at 0x%x failed: %s", off,
			 strerror(errno));
}

/* The DMA registers are 64-bit and edu ignores writes to their upper half,
 * so a high address needs a single 8-byte access. */
static inline uint64_t edu_read64(const struct edu_bar *b, uint32_t off)
{
	uint64_t v = ~0ull;

	if (b->map)
		return *(volatile uint64_t *)(b->map + off);
	if (pread(b->fd, &v, 8, (off_t)(b->offset + off)) != 8)
		return ~0ull;
	return v;
}

static inline void edu_write64(struct edu_bar *b, uint32_t off, uint64_t v)
{
	if (b->map)
		*(volatile uint64_t *)(b->map + off) = v;
	else if (pwrite(b->fd, &v, 8, (off_t)(b->offset + off)) != 8)
		snprintf(b->err, sizeof(b->err), "BAR0 write at 0x%x failed: %s", off,
			 strerror(errno));
}

/* False if a DMA is still running after EDU_DMA_TIMEOUT_NS. */
static inline bool edu_wait_idle(const struct edu_bar *b)
{
	uint64_t deadline = now_ns() + EDU_DMA_TIMEOUT_NS;

	while (edu_read64(b, EDU_REG_DMA_CMD) & EDU_DMA_RUN) {
		if (now_ns() > deadline)
			return false;
		sleep_ns(EDU_DMA_POLL_NS);
	}
	return true;
}

/* One DMA between bus address ram and the device buffer, waited for.
 * to_ram: device buffer -> RAM (the device writes memory); else RAM ->
 * device buffer. 0, or -1 with the reason in b->err. *run_ns (if not NULL)
 * gets the time from the start command to observed completion. */
static inline int edu_dma(struct edu_bar *b, bool to_ram, uint64_t ram, uint32_t count,
			  uint64_t *run_ns)
{
	uint64_t src = to_ram ? EDU_BUF_ADDR : ram;
	uint64_t dst = to_ram ? ram : EDU_BUF_ADDR;
	uint64_t t0;

	/* edu only logs an out-of-range transfer and then overruns its own
	 * buffer, so never ask for one. */
	if (!count || count > EDU_BUF_SIZE) {
		snprintf(b->err, sizeof(b->err), "bad DMA count %u", count);
		return -1;
	}
	/* Register writes are ignored while a DMA runs. */
	if (!edu_wait_idle(b)) {
		snprintf(b->err, sizeof(b->err),
			 "DMA did not complete (device still busy from an earlier DMA)");
		return -1;
	}
	io_barrier(); /* buffer contents visible before the device reads them */
	edu_write64(b, EDU_REG_DMA_SRC, src);
	edu_write64(b, EDU_REG_DMA_DST, dst);
	edu_write64(b, EDU_REG_DMA_CNT, count);
	if (edu_read64(b, EDU_REG_DMA_SRC) != src || edu_read64(b, EDU_REG_DMA_DST) != dst ||
	    edu_read64(b, EDU_REG_DMA_CNT) != count) {
		snprintf(b->err, sizeof(b->err), "DMA registers did not take the programmed values");
		return -1;
	}
	t0 = now_ns();
	edu_write64(b, EDU_REG_DMA_CMD, EDU_DMA_RUN | (to_ram ? EDU_DMA_TO_RAM : 0));
	if (!edu_wait_idle(b)) {
		snprintf(b->err, sizeof(b->err), "DMA did not complete within %llu s",
			 EDU_DMA_TIMEOUT_NS / 1000000000ull);
		return -1;
	}
	io_barrier(); /* completion observed before the CPU looks at the buffer */
	if (run_ns)
		*run_ns = now_ns() - t0;
	return 0;
}
#endif
