/*
 * edu-dma: drive QEMU's "edu" PCI device (1234:11e8) from guest userspace
 * through VFIO, to test that the IOMMU translates, isolates and tears down
 * DMA mappings correctly. Output is KTAP v1 (see README.md).
 *
 * edu device model (hw/misc/edu.c): BAR0 holds the registers, the device owns
 * a 4 KiB buffer at device address 0x40000, and a DMA copies between that
 * buffer and a bus address ~100 ms (virtual time) after it is started. A DMA
 * that the IOMMU blocks still "completes"; the only evidence in the guest is
 * data that did not change (the harness checks the kernel log for the fault).
 *
 * Exit code: 0 all tests ok, 1 some test not ok, 2 bail out (environment).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <linux/pci_regs.h>
#include <linux/vfio.h>

#include "args.h"
#include "edu.h"
#include "ktap.h"
#include "pci.h"
#include "vfio.h"

/* ------------------------------------------------------------------ */
/* options                                                             */

#define MAX_LIST 32
#define IOVA_HIGH UINT64_MAX /* "high" in an IOVA list: computed at runtime */
#define HIGH_IOVA_CAP (1ull << 40)      /* well inside a 44-bit SMMU ias */
#define HIGH_IOVA_HEADROOM (2ull << 20) /* high IOVA = top of range - 2 MiB */

enum backend { BACKEND_TYPE1, BACKEND_IOMMUFD };

static struct options {
	const char *cmd;
	const char *bdf;
	enum backend backend;
	uint64_t seed;
	uint32_t sizes[MAX_LIST];
	int nr_sizes;
	uint64_t iovas[MAX_LIST];
	int nr_iovas;
	uint64_t iova;
	bool iova_set;
	uint32_t size;
	unsigned long iterations;
	unsigned long dma_every;
	bool wo_read_allowed; /* perm: this IOMMU maps write-only as read-write */
	const char *peer;     /* isolation: the other edu */
	const char *fuzz_ops; /* fuzz: run this sequence (--ops) */
	unsigned long fuzz_length; /* fuzz: generate this many operations */
} opt = {
	.backend = BACKEND_TYPE1,
	.seed = 0x5eed,
	.size = EDU_BUF_SIZE,
	.iterations = 2000,
	.dma_every = 200,
	.fuzz_length = 40,
};

/* ------------------------------------------------------------------ */
/* device / IOMMU state                                                */

#define MAX_RANGES 32

struct iova_range {
	uint64_t start, last; /* inclusive */
};

struct edu {
	char bdf[32];
	unsigned int sid; /* PCI requester ID = SMMU StreamID: (bus << 8) | devfn */
	int group;
	enum backend backend;

	int container_fd, group_fd; /* type1 */
	int iommufd;                /* iommufd */
	uint32_t ioas_id, devid;
	int device_fd;

	struct edu_bar bar; /* BAR0; bar.map NULL: pread/pwrite on device_fd */
	uint64_t bar0_size;

	struct iova_range ranges[MAX_RANGES];
	int nr_ranges;
	bool ranges_known;
	uint64_t iova_pgsizes;
	size_t page;     /* mapping granule: max(CPU page, smallest IOMMU page) */
	uint64_t high_iova; /* 0: none usable */

	/* DMA statistics, for the dma_rate metric */
	uint64_t dma_bytes, dma_ns, dma_count;

	char err[256]; /* why the last map/unmap/DMA helper failed */
};

/* A host buffer and where (if anywhere) it is mapped in IOVA space. */
struct dmabuf {
	uint8_t *va;
	size_t len;    /* allocated bytes */
	uint64_t iova;
	size_t maplen; /* mapped bytes, 0 when not mapped */
};

/* ------------------------------------------------------------------ */
/* small utilities                                                     */

static __attribute__((format(printf, 2, 3))) void set_err(struct edu *e, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(e->err, sizeof(e->err), fmt, ap);
	va_end(ap);
}

static uint64_t align_down(uint64_t v, uint64_t a)
{
	return v & ~(a - 1);
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) & ~(a - 1);
}

static size_t min_sz(size_t a, size_t b)
{
	return a < b ? a : b;
}

/* ------------------------------------------------------------------ */
/* patterns: every buffer gets data derived from (seed, purpose, iova, size)
 * so that data left behind by another step or another test never matches. */

enum pattern_tag {
	TAG_SRC = 1,  /* roundtrip source */
	TAG_POISON,   /* destination before a DMA */
	TAG_DEVICE,   /* loaded into the device buffer */
	TAG_SENTINEL, /* must never change */
	TAG_AUX,      /* helper buffer contents */
	TAG_P1, TAG_P2, TAG_P3, TAG_Q,
	TAG_STRESS,
	TAG_FUZZ,
};

static uint64_t splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t pattern_key(enum pattern_tag tag, uint64_t iova, uint64_t size)
{
	uint64_t s = opt.seed;
	uint64_t k = splitmix64(&s);

	s = k ^ ((uint64_t)tag << 56);
	k = splitmix64(&s);
	s = k ^ iova;
	k = splitmix64(&s);
	s = k ^ size;
	return splitmix64(&s);
}

static void fill_pattern(uint8_t *buf, size_t len, uint64_t key)
{
	uint64_t s = key;

	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = splitmix64(&s);

		memcpy(buf + i, &v, min_sz(8, len - i));
	}
}

/* Returns true if equal; otherwise describes the first difference in why. */
static bool compare(const uint8_t *got, const uint8_t *want, size_t len,
		    const char *what, char *why, size_t whylen)
{
	size_t first = len, ndiff = 0;

	for (size_t i = 0; i < len; i++) {
		if (got[i] != want[i]) {
			if (first == len)
				first = i;
			ndiff++;
		}
	}
	if (!ndiff)
		return true;
	snprintf(why, whylen,
		 "%s: %zu of %zu bytes differ, first at offset %zu (got 0x%02x want 0x%02x)",
		 what, ndiff, len, first, got[first], want[first]);
	return false;
}

static bool all_bytes(const uint8_t *buf, size_t len, uint8_t v)
{
	for (size_t i = 0; i < len; i++)
		if (buf[i] != v)
			return false;
	return true;
}

/* ------------------------------------------------------------------ */
/* IOVA ranges                                                         */

static void add_range(struct edu *e, uint64_t start, uint64_t last)
{
	if (e->nr_ranges < MAX_RANGES)
		e->ranges[e->nr_ranges++] = (struct iova_range){ start, last };
	e->ranges_known = true;
}

/* True if [iova, iova + len) lies inside one valid range (or none were
 * reported, in which case the kernel's MAP will be the judge). */
static bool iova_valid(const struct edu *e, uint64_t iova, uint64_t len)
{
	if (!e->ranges_known)
		return true;
	if (!len || iova + len - 1 < iova)
		return false;
	for (int i = 0; i < e->nr_ranges; i++)
		if (iova >= e->ranges[i].start && iova + len - 1 <= e->ranges[i].last)
			return true;
	return false;
}

/* Highest page-aligned IOVA that is HIGH_IOVA_HEADROOM below the top of a
 * valid range, with the top capped at HIGH_IOVA_CAP (the IOMMU input size is
 * not visible from here; a 44-bit SMMU ias comfortably holds 40 bits). */
static uint64_t pick_high_iova(const struct edu *e)
{
	uint64_t best = 0;

	if (!e->ranges_known)
		return HIGH_IOVA_CAP - HIGH_IOVA_HEADROOM;
	for (int i = 0; i < e->nr_ranges; i++) {
		const struct iova_range *r = &e->ranges[i];
		uint64_t limit = r->last >= HIGH_IOVA_CAP - 1 ? HIGH_IOVA_CAP : r->last + 1;
		uint64_t cand;

		if (limit < HIGH_IOVA_HEADROOM || r->start >= limit)
			continue;
		cand = align_down(limit - HIGH_IOVA_HEADROOM, e->page);
		if (cand >= r->start && cand > best)
			best = cand;
	}
	return best;
}

/* First candidate IOVA with room for len bytes that avoids [lo, hi). */
static uint64_t pick_helper_iova(const struct edu *e, uint64_t len, uint64_t lo, uint64_t hi)
{
	static const uint64_t cand[] = { 0x100000, 0x10000000, 0x40000000, 0x1000000000ull };

	for (size_t i = 0; i < sizeof(cand) / sizeof(cand[0]); i++) {
		if (cand[i] + len <= lo || cand[i] >= hi) {
			if (iova_valid(e, cand[i], len))
				return cand[i];
		}
	}
	ktap_bail("no free helper IOVA outside [0x%" PRIx64 ", 0x%" PRIx64 ")", lo, hi);
}

/* ------------------------------------------------------------------ */
/* VFIO type1 backend                                                  */

static void type1_query_iova(struct edu *e)
{
	size_t sz = sizeof(struct vfio_iommu_type1_info);
	struct vfio_iommu_type1_info *info;

	/* The kernel reports the full size (with capabilities) in argsz. */
	for (;;) {
		info = calloc(1, sz);
		if (!info)
			ktap_bail("out of memory");
		info->argsz = sz;
		if (ioctl(e->container_fd, VFIO_IOMMU_GET_INFO, info))
			ktap_bail("VFIO_IOMMU_GET_INFO: %s", strerror(errno));
		if (info->argsz <= sz)
			break;
		sz = info->argsz;
		free(info);
	}

	if (info->flags & VFIO_IOMMU_INFO_PGSIZES)
		e->iova_pgsizes = info->iova_pgsizes;

	if (info->flags & VFIO_IOMMU_INFO_CAPS) {
		uint32_t off = info->cap_offset;

		while (off && off + sizeof(struct vfio_info_cap_header) <= sz) {
			struct vfio_info_cap_header *h = (void *)((uint8_t *)info + off);

			if (h->id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
				struct vfio_iommu_type1_info_cap_iova_range *c = (void *)h;

				for (uint32_t i = 0; i < c->nr_iovas; i++) {
					if ((uint8_t *)&c->iova_ranges[i + 1] > (uint8_t *)info + sz)
						break;
					add_range(e, c->iova_ranges[i].start, c->iova_ranges[i].end);
				}
				/* An IOVA cap with no ranges means nothing is mappable. */
				e->ranges_known = true;
			}
			off = h->next;
		}
	}
	free(info);
}

static void type1_setup(struct edu *e)
{
	struct vfio_type1 t;

	vfio_type1_open(e->bdf, e->group, &t);
	e->container_fd = t.container;
	e->group_fd = t.group;
	e->device_fd = t.device;
	type1_query_iova(e);
}

/* ------------------------------------------------------------------ */
/* iommufd backend (VFIO device cdev)                                  */

static void iommufd_query_iova(struct edu *e)
{
	struct iommu_iova_range r[MAX_RANGES];
	struct iommu_ioas_iova_ranges q = {
		.size = sizeof(q),
		.ioas_id = e->ioas_id,
		.num_iovas = MAX_RANGES,
		.allowed_iovas = (uintptr_t)r,
	};

	if (ioctl(e->iommufd, IOMMU_IOAS_IOVA_RANGES, &q))
		ktap_bail("IOMMU_IOAS_IOVA_RANGES: %s", strerror(errno));
	e->ranges_known = true;
	for (uint32_t i = 0; i < q.num_iovas && i < MAX_RANGES; i++)
		add_range(e, r[i].start, r[i].last);
	e->iova_pgsizes = q.out_iova_alignment;
}

static void iommufd_setup(struct edu *e)
{
	struct vfio_iommufd f;

	vfio_iommufd_open(e->bdf, &f);
	e->iommufd = f.iommufd;
	e->device_fd = f.device;
	e->devid = f.devid;
	e->ioas_id = f.ioas_id;
	if (vfio_attach_pt(e->device_fd, e->ioas_id))
		ktap_bail("VFIO_DEVICE_ATTACH_IOMMUFD_PT(ioas %u): %s", e->ioas_id, strerror(errno));
	/* Ranges narrow on attach, so query only now. */
	iommufd_query_iova(e);
}

/* ------------------------------------------------------------------ */
/* map / unmap (both backends)                                         */

/* Mapping permissions, as the device sees them. */
#define PERM_READ 0x1  /* the device may read the buffer (RAM -> device DMA) */
#define PERM_WRITE 0x2 /* the device may write it (device -> RAM DMA) */
#define PERM_RW (PERM_READ | PERM_WRITE)

static const char *perm_name(unsigned int perm)
{
	return perm == PERM_RW ? "read-write" : perm == PERM_READ ? "read-only" : "write-only";
}

static int iommu_map_perm(struct edu *e, uint64_t iova, void *va, size_t len, unsigned int perm)
{
	int ret;

	if (e->backend == BACKEND_TYPE1) {
		struct vfio_iommu_type1_dma_map m = {
			.argsz = sizeof(m),
			.flags = (perm & PERM_READ ? VFIO_DMA_MAP_FLAG_READ : 0) |
				 (perm & PERM_WRITE ? VFIO_DMA_MAP_FLAG_WRITE : 0),
			.vaddr = (uintptr_t)va,
			.iova = iova,
			.size = len,
		};
		ret = ioctl(e->container_fd, VFIO_IOMMU_MAP_DMA, &m);
	} else {
		struct iommu_ioas_map m = {
			.size = sizeof(m),
			.flags = IOMMU_IOAS_MAP_FIXED_IOVA |
				 (perm & PERM_READ ? IOMMU_IOAS_MAP_READABLE : 0) |
				 (perm & PERM_WRITE ? IOMMU_IOAS_MAP_WRITEABLE : 0),
			.ioas_id = e->ioas_id,
			.user_va = (uintptr_t)va,
			.length = len,
			.iova = iova,
		};
		ret = ioctl(e->iommufd, IOMMU_IOAS_MAP, &m);
	}
	if (ret) {
		set_err(e, "map %s iova=0x%" PRIx64 " len=0x%zx: %s", perm_name(perm), iova, len,
			strerror(errno));
		return -1;
	}
	return 0;
}

static int iommu_unmap(struct edu *e, uint64_t iova, size_t len)
{
	uint64_t done;
	int ret;

	if (e->backend == BACKEND_TYPE1) {
		struct vfio_iommu_type1_dma_unmap u = {
			.argsz = sizeof(u), .iova = iova, .size = len,
		};
		ret = ioctl(e->container_fd, VFIO_IOMMU_UNMAP_DMA, &u);
		done = u.size;
	} else {
		struct iommu_ioas_unmap u = {
			.size = sizeof(u), .ioas_id = e->ioas_id, .iova = iova, .length = len,
		};
		ret = ioctl(e->iommufd, IOMMU_IOAS_UNMAP, &u);
		done = u.length;
	}
	if (ret) {
		set_err(e, "unmap iova=0x%" PRIx64 " len=0x%zx: %s", iova, len, strerror(errno));
		return -1;
	}
	/* Unmapping less than we mapped would leave a live translation. */
	if (done != len) {
		set_err(e, "unmap iova=0x%" PRIx64 " len=0x%zx: kernel unmapped 0x%" PRIx64
			" bytes", iova, len, done);
		return -1;
	}
	return 0;
}

static void buf_alloc(struct edu *e, struct dmabuf *b, size_t len)
{
	len = align_up(len, e->page);
	b->va = mmap(NULL, len, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (b->va == MAP_FAILED)
		ktap_bail("mmap %zu bytes: %s", len, strerror(errno));
	b->len = len;
	b->maplen = 0;
}

/* Maps the first len bytes of b (0: all of it) at iova with permission perm. */
static int buf_map_perm(struct edu *e, struct dmabuf *b, uint64_t iova, size_t len,
			unsigned int perm)
{
	if (!len)
		len = b->len;
	if (iommu_map_perm(e, iova, b->va, len, perm))
		return -1;
	b->iova = iova;
	b->maplen = len;
	return 0;
}

/* Maps the first len bytes of b (0: all of it) at iova, read-write. */
static int buf_map(struct edu *e, struct dmabuf *b, uint64_t iova, size_t len)
{
	return buf_map_perm(e, b, iova, len, PERM_RW);
}

static int buf_unmap(struct edu *e, struct dmabuf *b)
{
	int ret;

	if (!b->maplen)
		return 0;
	ret = iommu_unmap(e, b->iova, b->maplen);
	b->maplen = 0; /* even on failure: don't retry a broken unmap forever */
	return ret;
}

/* Setup-time mapping of a helper buffer: failure is an environment error. */
static void buf_map_or_bail(struct edu *e, struct dmabuf *b, uint64_t iova)
{
	if (buf_map(e, b, iova, 0))
		ktap_bail("%s", e->err);
}

/* ------------------------------------------------------------------ */
/* BAR0 / config space                                                 */

static void device_setup(struct edu *e)
{
	struct vfio_region_info ri;

	/* mmap is the normal path; pread/pwrite keeps us going without it. */
	e->bar.map = vfio_region_map(e->device_fd, VFIO_PCI_BAR0_REGION_INDEX, "BAR0",
				     EDU_REGS_END, false, &ri);
	e->bar.fd = e->device_fd;
	e->bar.offset = ri.offset;
	e->bar0_size = ri.size;
	vfio_pci_set_master(e->device_fd);
}

/* ------------------------------------------------------------------ */
/* DMA                                                                 */

/* One DMA through edu.h's edu_dma(), counted for the dma_rate metric; its
 * failure (or a failed BAR0 write) lands in e->err. */
static int dma_run(struct edu *e, bool to_ram, uint64_t ram_iova, uint32_t count)
{
	uint64_t ns = 0;
	int ret;

	e->bar.err[0] = '\0';
	ret = edu_dma(&e->bar, to_ram, ram_iova, count, &ns);
	if (e->bar.err[0])
		copy_str(e->err, sizeof(e->err), e->bar.err);
	if (ret)
		return -1;
	e->dma_ns += ns;
	e->dma_bytes += count;
	e->dma_count++;
	return 0;
}

/* RAM at iova -> device buffer. */
static int dma_to_device(struct edu *e, uint64_t iova, uint32_t count)
{
	return dma_run(e, false, iova, count);
}

/* Device buffer -> RAM at iova. */
static int dma_from_device(struct edu *e, uint64_t iova, uint32_t count)
{
	return dma_run(e, true, iova, count);
}

/* ------------------------------------------------------------------ */
/* setup                                                               */

/* Opens the edu at bdf (NULL: the lowest-numbered one) through the backend. */
static void edu_setup(struct edu *e, const char *bdf)
{
	long cpu_page = sysconf(_SC_PAGESIZE);

	memset(e, 0, sizeof(*e));
	e->container_fd = e->group_fd = e->iommufd = e->device_fd = -1;
	e->backend = opt.backend;

	edu_find(bdf, e->bdf, sizeof(e->bdf), &e->sid);
	/* Bind first: a kernel that probes the IOMMU at driver bind (6.12)
	 * gives a driverless device no group. */
	vfio_bind_pci(e->bdf);
	e->group = vfio_iommu_group(e->bdf);

	if (e->backend == BACKEND_TYPE1)
		type1_setup(e);
	else
		iommufd_setup(e);
	device_setup(e);

	/* Map in units the IOMMU and the CPU can both represent. */
	e->page = cpu_page > 0 ? (size_t)cpu_page : 4096;
	if (e->iova_pgsizes) {
		uint64_t min_pg = e->iova_pgsizes & -e->iova_pgsizes;

		if (min_pg > e->page)
			e->page = min_pg;
	}
	e->high_iova = pick_high_iova(e);
}

static void print_setup(const struct edu *e)
{
	char ranges[1024] = "";
	size_t n = 0;

	ktap_diag("backend=%s", e->backend == BACKEND_TYPE1 ? "type1" : "iommufd");
	ktap_diag("bdf=%s", e->bdf);
	ktap_diag("sid=0x%x", e->sid);
	ktap_diag("iommu_group=%d", e->group);
	for (int i = 0; i < e->nr_ranges && n < sizeof(ranges); i++)
		n += snprintf(ranges + n, sizeof(ranges) - n, "%s0x%" PRIx64 "-0x%" PRIx64,
			      i ? "," : "", e->ranges[i].start, e->ranges[i].last);
	ktap_diag("iova_ranges=%s", e->ranges_known ? ranges : "unknown");
	ktap_diag("iova_pgsizes=0x%" PRIx64, e->iova_pgsizes);
	ktap_diag("page_size=%zu", e->page);
	ktap_diag("high_iova=0x%" PRIx64, e->high_iova);
	ktap_diag("bar0_access=%s", e->bar.map ? "mmap" : "pread");
	ktap_diag("seed=0x%" PRIx64, opt.seed);
}

/* ------------------------------------------------------------------ */
/* info                                                                */

static void cmd_info(struct edu *e)
{
	uint32_t id = edu_read32(&e->bar, EDU_REG_ID);
	uint32_t probe = 0x5a5a1234u, live;
	char why[64];

	edu_write32(&e->bar, EDU_REG_LIVENESS, probe);
	live = edu_read32(&e->bar, EDU_REG_LIVENESS);
	ktap_diag("bar0_size=0x%" PRIx64, e->bar0_size);
	ktap_diag("bar0_id=0x%08x", id);
	ktap_diag("liveness=%s", live == ~probe ? "ok" : "bad");
	snprintf(why, sizeof(why), "read 0x%08x", id);
	ktap_result(id == EDU_ID, 0, "edu id 0x010000ed", why);
}

/* ------------------------------------------------------------------ */
/* roundtrip                                                           */

/* Resolves "high" entries of an IOVA list; 0 when no high IOVA exists. */
static uint64_t resolve_iova(const struct edu *e, uint64_t iova)
{
	return iova == IOVA_HIGH ? e->high_iova : iova;
}

/* src mapped at iova, dst at iova + page: RAM -> device -> RAM, compare. */
static bool roundtrip_one(struct edu *e, struct dmabuf *src, struct dmabuf *dst,
			  uint64_t iova, uint32_t size, char *why, size_t wl)
{
	uint64_t dst_iova = iova + e->page;
	uint64_t poison_key = pattern_key(TAG_POISON, iova, size);
	uint8_t *poison = malloc(e->page);
	bool ok = false;

	if (!poison)
		ktap_bail("out of memory");
	fill_pattern(src->va, e->page, pattern_key(TAG_SRC, iova, size));
	fill_pattern(dst->va, e->page, poison_key);
	fill_pattern(poison, e->page, poison_key);

	if (buf_map(e, src, iova, e->page)) {
		copy_str(why, wl, e->err);
		goto out;
	}
	if (buf_map(e, dst, dst_iova, e->page)) {
		copy_str(why, wl, e->err);
		goto unmap;
	}
	if (dma_to_device(e, iova, size) || dma_from_device(e, dst_iova, size)) {
		copy_str(why, wl, e->err);
		goto unmap;
	}
	if (!compare(dst->va, src->va, size, "data mismatch", why, wl))
		goto unmap;
	/* Bytes past count must be untouched: catches overlong or misplaced DMA. */
	if (!compare(dst->va + size, poison + size, e->page - size, "overrun past count", why, wl))
		goto unmap;
	ok = true;
unmap:
	if (buf_unmap(e, dst) && ok) {
		copy_str(why, wl, e->err);
		ok = false;
	}
	if (buf_unmap(e, src) && ok) {
		copy_str(why, wl, e->err);
		ok = false;
	}
out:
	free(poison);
	return ok;
}

static void cmd_roundtrip(struct edu *e)
{
	struct dmabuf src, dst;
	char name[96], why[256];

	buf_alloc(e, &src, e->page);
	buf_alloc(e, &dst, e->page);

	for (int i = 0; i < opt.nr_iovas; i++) {
		uint64_t iova = resolve_iova(e, opt.iovas[i]);

		for (int j = 0; j < opt.nr_sizes; j++) {
			uint32_t size = opt.sizes[j];
			bool ok;

			snprintf(name, sizeof(name), "roundtrip iova=0x%" PRIx64 " size=%u", iova,
				 size);
			if (opt.iovas[i] == IOVA_HIGH && !iova) {
				ktap_result(0, 1, name, "no high IOVA in the valid ranges");
				continue;
			}
			if (iova & (e->page - 1)) {
				ktap_result(0, 0, name, "iova not page aligned");
				continue;
			}
			if (!iova_valid(e, iova, 2 * e->page)) {
				ktap_result(0, 1, name, "outside the valid IOVA ranges");
				continue;
			}
			why[0] = '\0';
			ok = roundtrip_one(e, &src, &dst, iova, size, why, sizeof(why));
			ktap_result(ok, 0, name, why);
		}
	}
	ktap_diag("dma_transfers=%" PRIu64, e->dma_count);
	if (e->dma_ns)
		ktap_diag("metric: dma_rate=%.0f B/s", e->dma_bytes * 1e9 / (double)e->dma_ns);
}

/* ------------------------------------------------------------------ */
/* fault-unmapped                                                      */

/* What a DMA read of an unmapped IOVA left in the device buffer. */
static const char *classify_fault_read(const uint8_t *got, size_t len, const uint8_t *before,
				       const uint8_t *const *foreign, int nr_foreign,
				       size_t foreign_len)
{
	/* Compare what overlaps, but not so little that chance could match. */
	size_t n = min_sz(len, foreign_len);

	if (!memcmp(got, before, len))
		return "unchanged";
	if (all_bytes(got, len, 0))
		return "zeroed";
	if (all_bytes(got, len, 0xff))
		return "ones";
	for (int i = 0; i < nr_foreign; i++)
		if (foreign[i] && n >= min_sz(len, 16) && !memcmp(got, foreign[i], n))
			return "foreign";
	return "changed";
}

static void cmd_fault_unmapped(struct edu *e)
{
	uint64_t fault = opt.iova_set ? opt.iova : 0x7000000;
	uint32_t size = opt.size;
	size_t pg = e->page, in_page = fault & (pg - 1);
	struct dmabuf lo = { 0 }, hi = { 0 }, aux_in, aux_out;
	uint64_t fault_page = align_down(fault, pg);
	uint64_t lo_iova = fault_page >= pg ? fault_page - pg : 0; /* 0: no room below */
	uint64_t hi_iova = align_up(fault + size, pg);
	uint64_t helper;
	uint8_t *dev_data, *lo_ref, *hi_ref, *aux_in_ref, *poison;
	const uint8_t *foreign[3];
	const char *result;
	bool control, ok;
	char why[256] = "";

	ktap_diag("fault_iova=0x%" PRIx64, fault);
	ktap_diag("fault_size=%u", size);
	ktap_diag("fault_iova_valid=%d", iova_valid(e, fault, size));

	dev_data = malloc(pg);
	lo_ref = malloc(pg);
	hi_ref = malloc(pg);
	aux_in_ref = malloc(pg);
	poison = malloc(pg);
	if (!dev_data || !lo_ref || !hi_ref || !aux_in_ref || !poison)
		ktap_bail("out of memory");
	fill_pattern(dev_data, pg, pattern_key(TAG_DEVICE, fault, size));
	fill_pattern(lo_ref, pg, pattern_key(TAG_SENTINEL, lo_iova, size));
	fill_pattern(hi_ref, pg, pattern_key(TAG_SENTINEL, hi_iova, size));
	fill_pattern(aux_in_ref, pg, pattern_key(TAG_AUX, fault, size));
	fill_pattern(poison, pg, pattern_key(TAG_POISON, fault, size));

	/* Sentinels on the pages right around the hole: an off-by-one in the
	 * page tables would land there. Skipped where they don't fit. */
	if (fault_page >= pg && iova_valid(e, lo_iova, pg)) {
		buf_alloc(e, &lo, pg);
		memcpy(lo.va, lo_ref, pg);
		buf_map_or_bail(e, &lo, lo_iova);
		ktap_diag("sentinel_lo_iova=0x%" PRIx64, lo_iova);
	}
	if (hi_iova > fault && iova_valid(e, hi_iova, pg)) {
		buf_alloc(e, &hi, pg);
		memcpy(hi.va, hi_ref, pg);
		buf_map_or_bail(e, &hi, hi_iova);
		ktap_diag("sentinel_hi_iova=0x%" PRIx64, hi_iova);
	}
	helper = pick_helper_iova(e, 2 * pg, lo_iova, hi_iova + pg);
	ktap_diag("helper_iova=0x%" PRIx64, helper);
	buf_alloc(e, &aux_in, pg);
	buf_alloc(e, &aux_out, pg);
	buf_map_or_bail(e, &aux_in, helper);
	buf_map_or_bail(e, &aux_out, helper + pg);

	/* 1: mapped DMA works, and leaves dev_data in the device buffer. */
	memcpy(aux_in.va, dev_data, pg);
	memcpy(aux_out.va, poison, pg);
	control = !dma_to_device(e, aux_in.iova, size) && !dma_from_device(e, aux_out.iova, size);
	if (!control)
		copy_str(why, sizeof(why), e->err);
	else
		control = compare(aux_out.va, dev_data, size, "readback mismatch", why,
				  sizeof(why));
	ktap_result(control, 0, "fault-unmapped control: mapped DMA works", why);

	/* 2: device writes to the unmapped IOVA; no host memory may change.
	 * Refill the helpers first so none of them holds the device's data. */
	memcpy(aux_in.va, aux_in_ref, pg);
	memcpy(aux_out.va, poison, pg);
	why[0] = '\0';
	if (!control) {
		ktap_result(0, 1, "fault-unmapped write: memory unchanged", "control failed");
	} else if (dma_from_device(e, fault, size)) {
		ktap_result(0, 0, "fault-unmapped write: memory unchanged", e->err);
	} else {
		io_barrier();
		ok = (!lo.va || compare(lo.va, lo_ref, pg, "sentinel below", why, sizeof(why))) &&
		     (!hi.va || compare(hi.va, hi_ref, pg, "sentinel above", why, sizeof(why))) &&
		     compare(aux_in.va, aux_in_ref, pg, "helper buffer", why, sizeof(why)) &&
		     compare(aux_out.va, poison, pg, "helper buffer", why, sizeof(why));
		ktap_result(ok, 0, "fault-unmapped write: memory unchanged", why);
	}

	/* 3: device reads from the unmapped IOVA; it must not get host data.
	 * What QEMU puts in the buffer on a blocked read is reported only. */
	why[0] = '\0';
	if (!control) {
		ktap_result(0, 1, "fault-unmapped read: no foreign data", "control failed");
	} else if (dma_to_device(e, fault, size) || dma_from_device(e, aux_out.iova, size)) {
		ktap_result(0, 0, "fault-unmapped read: no foreign data", e->err);
	} else {
		/* A mistranslation would read at the same offset in some page. */
		foreign[0] = lo.va ? lo_ref + in_page : NULL;
		foreign[1] = hi.va ? hi_ref + in_page : NULL;
		foreign[2] = aux_in_ref + in_page;
		result = classify_fault_read(aux_out.va, size, dev_data, foreign, 3, pg - in_page);
		ktap_diag("fault_read_result=%s", result);
		ok = strcmp(result, "foreign") != 0;
		if (!ok)
			snprintf(why, sizeof(why),
				 "device read host memory through an unmapped IOVA");
		ktap_result(ok, 0, "fault-unmapped read: no foreign data", why);
	}
}

/* ------------------------------------------------------------------ */
/* after-unmap                                                         */

static void cmd_after_unmap(struct edu *e)
{
	uint64_t iova = opt.iova_set ? opt.iova : 0x3000000;
	uint32_t size = opt.size;
	size_t pg = e->page;
	struct dmabuf a, aux_in, aux_out;
	uint8_t *p1, *p2, *p3, *q, *poison;
	uint64_t helper;
	const char *result;
	bool control, unmapped, ok;
	char why[256] = "";

	ktap_diag("fault_iova=0x%" PRIx64, iova);
	ktap_diag("fault_size=%u", size);
	if (iova & (pg - 1))
		ktap_bail("--iova 0x%" PRIx64 " is not page aligned", iova);
	if (!iova_valid(e, iova, pg))
		ktap_bail("--iova 0x%" PRIx64 " is outside the valid IOVA ranges", iova);

	p1 = malloc(pg);
	p2 = malloc(pg);
	p3 = malloc(pg);
	q = malloc(pg);
	poison = malloc(pg);
	if (!p1 || !p2 || !p3 || !q || !poison)
		ktap_bail("out of memory");
	fill_pattern(p1, pg, pattern_key(TAG_P1, iova, size));
	fill_pattern(p2, pg, pattern_key(TAG_P2, iova, size));
	fill_pattern(p3, pg, pattern_key(TAG_P3, iova, size));
	fill_pattern(q, pg, pattern_key(TAG_Q, iova, size));
	fill_pattern(poison, pg, pattern_key(TAG_POISON, iova, size));

	helper = pick_helper_iova(e, 2 * pg, iova, iova + pg);
	ktap_diag("helper_iova=0x%" PRIx64, helper);
	buf_alloc(e, &a, pg);
	buf_alloc(e, &aux_in, pg);
	buf_alloc(e, &aux_out, pg);
	buf_map_or_bail(e, &aux_in, helper);
	buf_map_or_bail(e, &aux_out, helper + pg);

	/* 1: DMA through A in both directions. Besides proving the mapping,
	 * this warms any IOTLB entry that a missing invalidation would keep. */
	memcpy(a.va, p1, pg);
	memcpy(aux_out.va, poison, pg);
	memcpy(aux_in.va, q, pg);
	control = !buf_map(e, &a, iova, pg) && !dma_to_device(e, iova, size) &&
		  !dma_from_device(e, aux_out.iova, size) && !dma_to_device(e, aux_in.iova, size) &&
		  !dma_from_device(e, iova, size);
	if (!control)
		copy_str(why, sizeof(why), e->err);
	else
		control = compare(aux_out.va, p1, size, "read through mapping", why, sizeof(why)) &&
			  compare(a.va, q, size, "write through mapping", why, sizeof(why));
	ktap_result(control, 0, "after-unmap control: mapping works", why);

	/* Unmap while A holds P2 and the device buffer holds P3. */
	memcpy(a.va, p2, pg);
	unmapped = !buf_unmap(e, &a);
	if (!unmapped)
		ktap_diag("unmap_error=%s", e->err);
	memcpy(aux_in.va, p3, pg);
	if (control && unmapped && dma_to_device(e, aux_in.iova, size)) {
		ktap_diag("setup_error=%s", e->err);
		control = false;
	}

	/* 2: device -> RAM at the old IOVA must not reach A. */
	why[0] = '\0';
	if (!unmapped) {
		ktap_result(0, 0, "after-unmap write: memory unchanged", e->err);
	} else if (!control) {
		ktap_result(0, 1, "after-unmap write: memory unchanged", "control failed");
	} else if (dma_from_device(e, iova, size)) {
		ktap_result(0, 0, "after-unmap write: memory unchanged", e->err);
	} else {
		io_barrier();
		ok = !memcmp(a.va, p2, pg);
		if (!ok)
			snprintf(why, sizeof(why),
				 "stale mapping: DMA after unmap reached memory%s",
				 memcmp(a.va, p3, size) ? "" : " (buffer holds the device's data)");
		ktap_result(ok, 0, "after-unmap write: memory unchanged", why);
	}

	/* 3: RAM -> device from the old IOVA must not return P2. */
	why[0] = '\0';
	if (!unmapped || !control) {
		ktap_result(0, 1, "after-unmap read: no stale data",
			    unmapped ? "control failed" : "unmap failed");
	} else {
		memcpy(aux_out.va, poison, pg);
		if (dma_to_device(e, iova, size) || dma_from_device(e, aux_out.iova, size)) {
			ktap_result(0, 0, "after-unmap read: no stale data", e->err);
		} else {
			if (!memcmp(aux_out.va, p2, size))
				result = "stale";
			else if (!memcmp(aux_out.va, p3, size))
				result = "unchanged";
			else if (all_bytes(aux_out.va, size, 0))
				result = "zeroed";
			else
				result = "changed";
			ktap_diag("stale_read_result=%s", result);
			ok = strcmp(result, "stale") != 0;
			if (!ok)
				snprintf(why, sizeof(why),
					 "stale mapping: DMA after unmap read memory");
			ktap_result(ok, 0, "after-unmap read: no stale data", why);
		}
	}
}

/* ------------------------------------------------------------------ */
/* perm: read-only and write-only mappings                            */

/* A page holding the pattern of (tag, iova, size). */
static uint8_t *pattern_page(size_t pg, enum pattern_tag tag, uint64_t iova, uint32_t size)
{
	uint8_t *p = malloc(pg);

	if (!p)
		ktap_bail("out of memory");
	fill_pattern(p, pg, pattern_key(tag, iova, size));
	return p;
}

/* The read-write helper pair of a test, in at the returned IOVA and out one
 * page above, outside [lo, hi). */
static uint64_t map_helper_pair(struct edu *e, struct dmabuf *in, struct dmabuf *out,
				uint64_t lo, uint64_t hi)
{
	uint64_t helper = pick_helper_iova(e, 2 * e->page, lo, hi);

	ktap_diag("helper_iova=0x%" PRIx64, helper);
	buf_alloc(e, in, e->page);
	buf_alloc(e, out, e->page);
	buf_map_or_bail(e, in, helper);
	buf_map_or_bail(e, out, helper + e->page);
	return helper;
}

/* Loads the device buffer with pattern data (through the read-write helper
 * mapping aux_in); false with e->err on failure. */
static bool load_device(struct edu *e, struct dmabuf *aux_in, const uint8_t *data,
			uint32_t size)
{
	memcpy(aux_in->va, data, e->page);
	return !dma_to_device(e, aux_in->iova, size);
}

static void cmd_perm(struct edu *e)
{
	uint64_t ro_iova = opt.iova_set ? opt.iova : 0x5000000;
	uint64_t wo_iova = ro_iova + 0x200000; /* another 2 MiB block */
	uint32_t size = opt.size;
	size_t pg = e->page;
	struct dmabuf ro, wo, aux_in, aux_out;
	uint8_t *p_ro, *p_wo, *p_wo2, *dev1, *dev2, *dev3, *poison;
	const char *result, *name;
	bool control, ok;
	char why[256] = "";

	ktap_diag("perm_ro_iova=0x%" PRIx64, ro_iova);
	ktap_diag("perm_wo_iova=0x%" PRIx64, wo_iova);
	ktap_diag("perm_size=%u", size);
	ktap_diag("wo_read_expected=%s", opt.wo_read_allowed ? "allowed" : "blocked");
	if (ro_iova & (pg - 1))
		ktap_bail("--iova 0x%" PRIx64 " is not page aligned", ro_iova);
	if (!iova_valid(e, ro_iova, pg) || !iova_valid(e, wo_iova, pg))
		ktap_bail("--iova 0x%" PRIx64 " (+2 MiB) is outside the valid IOVA ranges", ro_iova);

	p_ro = pattern_page(pg, TAG_P1, ro_iova, size);
	p_wo = pattern_page(pg, TAG_P2, wo_iova, size);
	p_wo2 = pattern_page(pg, TAG_P3, wo_iova, size);
	dev1 = pattern_page(pg, TAG_DEVICE, ro_iova, size);
	dev2 = pattern_page(pg, TAG_DEVICE, wo_iova, size);
	dev3 = pattern_page(pg, TAG_Q, wo_iova, size);
	poison = pattern_page(pg, TAG_POISON, ro_iova, size);

	buf_alloc(e, &ro, pg);
	buf_alloc(e, &wo, pg);
	map_helper_pair(e, &aux_in, &aux_out, ro_iova, wo_iova + pg);

	/* 1: read-write helper mappings carry data both ways. */
	memcpy(aux_out.va, poison, pg);
	control = load_device(e, &aux_in, dev1, size) && !dma_from_device(e, aux_out.iova, size);
	if (!control)
		copy_str(why, sizeof(why), e->err);
	else
		control = compare(aux_out.va, dev1, size, "readback mismatch", why, sizeof(why));
	ktap_result(control, 0, "perm control: read-write mapping works", why);

	/* The access that must fault comes first on each fresh mapping, so
	 * that the IOMMU walks the page table for it: QEMU 10.0's SMMUv3 does
	 * not record a stage-2 permission fault that hits its IOTLB (it
	 * attributes it to stage 1, whose fault recording is off in an S2-only
	 * STE), and checks only writes against a cached entry. */

	/* 2: the device writes a read-only mapping: nothing may change. */
	memcpy(ro.va, p_ro, pg);
	name = "perm read-only: device write blocked";
	if (buf_map_perm(e, &ro, ro_iova, pg, PERM_READ)) {
		ktap_result(0, 0, name, e->err);
	} else if (!control) {
		ktap_result(0, 1, name, "control failed");
	} else if (!load_device(e, &aux_in, dev2, size) || dma_from_device(e, ro_iova, size)) {
		ktap_result(0, 0, name, e->err);
	} else {
		io_barrier();
		ok = !memcmp(ro.va, p_ro, pg);
		ktap_diag("ro_write_result=%s", ok ? "blocked" : "through");
		if (!ok) {
			char diff[160];

			compare(ro.va, p_ro, pg, "buffer", diff, sizeof(diff));
			snprintf(why, sizeof(why),
				 "read-only mapping at iova 0x%" PRIx64 ": a device write"
				 " (device->memory DMA) got through%s; %.100s", ro_iova,
				 memcmp(ro.va, dev2, size) ? "" : " (buffer holds the device's data)",
				 diff);
		}
		ktap_result(ok, 0, name, why);
	}

	/* 3: the device reads the read-only mapping. */
	why[0] = '\0';
	name = "perm read-only: device read works";
	memcpy(ro.va, p_ro, pg);
	memcpy(aux_out.va, poison, pg);
	if (!ro.maplen || !control) {
		ktap_result(0, 1, name, ro.maplen ? "control failed" : "read-only map failed");
	} else if (dma_to_device(e, ro_iova, size) || dma_from_device(e, aux_out.iova, size)) {
		ktap_result(0, 0, name, e->err);
	} else {
		ok = compare(aux_out.va, p_ro, size,
			     "read-only mapping: device read did not get the data", why, sizeof(why));
		ktap_result(ok, 0, name, why);
	}
	buf_unmap(e, &ro);

	/* 4: the device reads a write-only mapping. Blocked where the IOMMU can
	 * express write-only (stage-2 HAP, virtio-iommu MAP flags); a stage-1
	 * LPAE PTE has no "no read" encoding, so there it is read-write and
	 * --wo-read allowed says so. */
	why[0] = '\0';
	memcpy(wo.va, p_wo, pg);
	memcpy(aux_out.va, poison, pg);
	name = opt.wo_read_allowed ? "perm write-only: device read allowed (no write-only encoding)"
				   : "perm write-only: device read blocked";
	if (buf_map_perm(e, &wo, wo_iova, pg, PERM_WRITE)) {
		ktap_result(0, 0, name, e->err);
	} else if (!control) {
		ktap_result(0, 1, name, "control failed");
	} else if (!load_device(e, &aux_in, dev1, size) || dma_to_device(e, wo_iova, size) ||
		   dma_from_device(e, aux_out.iova, size)) {
		ktap_result(0, 0, name, e->err);
	} else {
		if (!memcmp(aux_out.va, p_wo, size))
			result = "through";
		else if (!memcmp(aux_out.va, dev1, size))
			result = "blocked";
		else if (all_bytes(aux_out.va, size, 0))
			result = "zeroed";
		else
			result = "changed";
		ktap_diag("wo_read_result=%s", result);
		ok = opt.wo_read_allowed == !strcmp(result, "through");
		if (!ok && opt.wo_read_allowed)
			snprintf(why, sizeof(why),
				 "write-only mapping at iova 0x%" PRIx64 ": a device read"
				 " (memory->device DMA) was blocked (%s), but this IOMMU was"
				 " expected to map write-only as read-write", wo_iova, result);
		else if (!ok)
			snprintf(why, sizeof(why),
				 "write-only mapping at iova 0x%" PRIx64 ": a device read"
				 " (memory->device DMA) got through", wo_iova);
		ktap_result(ok, 0, name, why);
	}

	/* 5: the device writes the write-only mapping. */
	why[0] = '\0';
	name = "perm write-only: device write works";
	memcpy(wo.va, p_wo2, pg);
	if (!wo.maplen || !control) {
		ktap_result(0, 1, name, wo.maplen ? "control failed" : "write-only map failed");
	} else if (!load_device(e, &aux_in, dev3, size) || dma_from_device(e, wo_iova, size)) {
		ktap_result(0, 0, name, e->err);
	} else {
		io_barrier();
		ok = compare(wo.va, dev3, size, "write-only mapping: device write did not land",
			     why, sizeof(why)) &&
		     compare(wo.va + size, p_wo2 + size, pg - size, "overrun past count", why,
			     sizeof(why));
		ktap_result(ok, 0, name, why);
	}
	buf_unmap(e, &wo);
}

/* ------------------------------------------------------------------ */
/* isolation: two edus in two IOMMU groups, each with its own domain    */

/* Device d reads RAM at iova into its buffer, and writes it out through its
 * own read-write helper mapping out: what d sees at iova lands in out. */
static bool dma_peek(struct edu *d, uint64_t iova, struct dmabuf *out, const uint8_t *poison,
		     uint32_t size)
{
	memcpy(out->va, poison, d->page);
	return !dma_to_device(d, iova, size) && !dma_from_device(d, out->iova, size);
}

static void cmd_isolation(struct edu *e)
{
	static struct edu peer;
	struct edu *p = &peer;
	uint64_t same = opt.iova_set ? opt.iova : 0x6000000;
	uint64_t foreign = same + 0x200000; /* mapped for e only */
	uint32_t size = opt.size;
	size_t pg = e->page;
	struct dmabuf a, b, c, e_in, e_out, p_in, p_out;
	uint8_t *pa, *pb, *pc, *de, *dp, *poison;
	bool ok, ok_e, ok_p;
	char why[256] = "";
	const char *name;

	if (!opt.peer)
		ktap_bail("bad arguments: isolation needs --peer BDF (a second edu)");
	edu_setup(p, opt.peer);
	if (p->page > pg)
		pg = e->page = p->page;
	ktap_diag("peer_bdf=%s", p->bdf);
	ktap_diag("peer_sid=0x%x", p->sid);
	ktap_diag("peer_iommu_group=%d", p->group);
	ktap_diag("same_iova=0x%" PRIx64, same);
	ktap_diag("foreign_iova=0x%" PRIx64, foreign);
	ktap_diag("isolation_size=%u", size);
	if (p->group == e->group)
		ktap_bail("%s and %s share IOMMU group %d: no isolation to test", e->bdf, p->bdf,
			  e->group);
	if (!iova_valid(e, same, pg) || !iova_valid(e, foreign, pg) || !iova_valid(p, same, pg))
		ktap_bail("--iova 0x%" PRIx64 " (+2 MiB) is outside the valid IOVA ranges", same);

	pa = pattern_page(pg, TAG_P1, same, size);
	pb = pattern_page(pg, TAG_P2, same, size);
	pc = pattern_page(pg, TAG_P3, foreign, size);
	de = pattern_page(pg, TAG_DEVICE, same, size);
	dp = pattern_page(pg, TAG_Q, same, size);
	poison = pattern_page(pg, TAG_POISON, same, size);

	buf_alloc(e, &a, pg);
	buf_alloc(e, &b, pg);
	buf_alloc(e, &c, pg);
	{
		/* The peer's helpers at the same IOVAs, in its own domain. */
		uint64_t helper = map_helper_pair(e, &e_in, &e_out, same, foreign + pg);

		buf_alloc(p, &p_in, pg);
		buf_alloc(p, &p_out, pg);
		buf_map_or_bail(p, &p_in, helper);
		buf_map_or_bail(p, &p_out, helper + pg);
	}
	memcpy(a.va, pa, pg);
	memcpy(b.va, pb, pg);
	memcpy(c.va, pc, pg);

	/* 1: the peer writes an IOVA mapped only in the first device's domain:
	 * the buffer there must not change (and the peer faults). */
	why[0] = '\0';
	name = "isolation foreign iova: peer write blocked";
	memcpy(p_in.va, dp, pg);
	if (buf_map(e, &c, foreign, pg)) {
		ktap_result(0, 0, name, e->err);
	} else if (dma_to_device(p, p_in.iova, size) || dma_from_device(p, foreign, size)) {
		ktap_result(0, 0, name, p->err);
	} else {
		io_barrier();
		ok = !memcmp(c.va, pc, pg);
		if (!ok)
			snprintf(why, sizeof(why), "%.16s's DMA write at iova 0x%" PRIx64
				 " landed in %.16s's mapping", p->bdf, foreign, e->bdf);
		ktap_result(ok, 0, name, why);
	}

	/* 2: the peer reads that IOVA: it must not get the buffer's data. */
	why[0] = '\0';
	name = "isolation foreign iova: peer read gets no foreign data";
	if (!c.maplen) {
		ktap_result(0, 1, name, "mapping failed");
	} else if (!dma_peek(p, foreign, &p_out, poison, size)) {
		ktap_result(0, 0, name, p->err);
	} else {
		ok = memcmp(p_out.va, pc, size) != 0;
		if (!ok)
			snprintf(why, sizeof(why), "%.16s's DMA read at iova 0x%" PRIx64
				 " got %.16s's buffer", p->bdf, foreign, e->bdf);
		ktap_result(ok, 0, name, why);
	}
	buf_unmap(e, &c);
	why[0] = '\0';
	/* 3: the same IOVA maps a different buffer in each device's domain;
	 * each device reads its own. */
	name = "isolation same iova: each device reads its own buffer";
	if (buf_map(e, &a, same, pg) || buf_map(p, &b, same, pg)) {
		ktap_result(0, 0, name, e->err[0] ? e->err : p->err);
	} else {
		ok_e = dma_peek(e, same, &e_out, poison, size);
		ok_p = dma_peek(p, same, &p_out, poison, size);
		if (!ok_e || !ok_p)
			copy_str(why, sizeof(why), ok_e ? p->err : e->err);
		ok = ok_e && ok_p;
		if (ok && !memcmp(p_out.va, pa, size))
			snprintf(why, sizeof(why), "%.16s read %.16s's buffer at iova 0x%" PRIx64
				 " (one device's DMA landed in another's mapping)", p->bdf, e->bdf,
				 same);
		else if (ok && !memcmp(e_out.va, pb, size))
			snprintf(why, sizeof(why), "%.16s read %.16s's buffer at iova 0x%" PRIx64
				 " (one device's DMA landed in another's mapping)", e->bdf, p->bdf,
				 same);
		else if (ok)
			ok = compare(e_out.va, pa, size, "first device, own buffer", why,
				     sizeof(why)) &&
			     compare(p_out.va, pb, size, "peer device, own buffer", why, sizeof(why));
		ok = ok && !why[0];
		ktap_result(ok, 0, name, why);
	}

	/* 4: and writes its own. */
	why[0] = '\0';
	name = "isolation same iova: each device writes its own buffer";
	memcpy(e_in.va, de, pg);
	memcpy(p_in.va, dp, pg);
	if (!a.maplen || !b.maplen) {
		ktap_result(0, 1, name, "mapping failed");
	} else if (dma_to_device(e, e_in.iova, size) || dma_to_device(p, p_in.iova, size) ||
		   dma_from_device(e, same, size) || dma_from_device(p, same, size)) {
		ktap_result(0, 0, name, e->err[0] ? e->err : p->err);
	} else {
		io_barrier();
		if (!memcmp(a.va, dp, size) || !memcmp(b.va, de, size))
			snprintf(why, sizeof(why), "a device's write at iova 0x%" PRIx64
				 " landed in the other device's buffer", same);
		else
			(void)(compare(a.va, de, size, "first device's write", why, sizeof(why)) &&
			       compare(b.va, dp, size, "peer device's write", why, sizeof(why)));
		ktap_result(!why[0], 0, name, why);
	}
	buf_unmap(e, &a);
	buf_unmap(p, &b);

}

/* ------------------------------------------------------------------ */
/* identity: the device in an identity (bypass) domain, no VFIO        */

/* Above the 48-bit input range of virt's virtio-iommu (aw-bits=48): no
 * mapping can cover it, and nothing answers there on the bus. */
#define IDENTITY_BEYOND_PA (1ull << 48)

/* Physical address of the page at va (mlocked), from /proc/self/pagemap. */
static uint64_t virt_to_phys(const void *va)
{
	long pg = sysconf(_SC_PAGESIZE);
	uint64_t entry = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	off_t off = (off_t)((uintptr_t)va / (uintptr_t)pg) * 8;

	if (fd < 0 || pread(fd, &entry, 8, off) != 8)
		ktap_bail("read /proc/self/pagemap: %s", strerror(errno));
	close(fd);
	if (!(entry & (1ull << 63)) || !(entry & ((1ull << 55) - 1)))
		ktap_bail("no physical address for %p in /proc/self/pagemap (not root?)", va);
	return (entry & ((1ull << 55) - 1)) * (uint64_t)pg + ((uintptr_t)va & (uintptr_t)(pg - 1));
}

/* Puts the (driverless) device's group in an identity domain; returns the
 * type the group had, to restore. */
static void set_group_type(struct edu *e, const char *type, char *old, size_t oldlen)
{
	char path[PATH_MAX], now[32] = "";
	int err;

	snprintf(path, sizeof(path), "/sys/kernel/iommu_groups/%d/type", e->group);
	if (old && !sysfs_read_line(path, old, oldlen))
		ktap_bail("read %s: %s", path, strerror(errno));
	err = sysfs_write(path, type);
	if (err)
		ktap_bail("write '%s' to %s: %s", type, path, strerror(-err));
	if (!sysfs_read_line(path, now, sizeof(now)) || strcmp(now, type))
		ktap_bail("%s reads '%s' after writing '%s'", path, now, type);
}

static void cmd_identity(struct edu *e)
{
	char path[PATH_MAX], drv[64], old_type[32];
	uint32_t size = opt.size;
	long pg = sysconf(_SC_PAGESIZE);
	uint8_t *buf, *pattern, *poison;
	uint64_t src_pa, dst_pa;
	uint16_t cmd;
	bool ok;
	char why[256] = "";
	int fd, cfg;

	memset(e, 0, sizeof(*e));
	e->container_fd = e->group_fd = e->iommufd = e->device_fd = -1;
	if (!opt.bdf)
		ktap_bail("bad arguments: identity needs --bdf (a device no driver uses)");
	edu_find(opt.bdf, e->bdf, sizeof(e->bdf), &e->sid);
	/* A group appears at the first driver bind on 6.12; it stays after. */
	if (!pci_link_name(e->bdf, "iommu_group", drv, sizeof(drv)))
		vfio_bind_pci(e->bdf);
	e->group = vfio_iommu_group(e->bdf);
	ktap_diag("bdf=%s", e->bdf);
	ktap_diag("sid=0x%x", e->sid);
	ktap_diag("iommu_group=%d", e->group);

	/* The group type can only change while no driver has the device. */
	if (pci_link_name(e->bdf, "driver", drv, sizeof(drv))) {
		int err = sysfs_write(pci_dev_path(path, sizeof(path), e->bdf, "driver/unbind"),
				      e->bdf);

		if (err)
			ktap_bail("unbind %s from %s: %s", e->bdf, drv, strerror(-err));
	}
	set_group_type(e, "identity", old_type, sizeof(old_type));
	ktap_diag("previous_domain=%s", old_type);
	ktap_result(1, 0, "identity domain accepted", NULL);

	/* BAR0 and bus mastering through sysfs: nothing goes through VFIO. */
	fd = open(pci_dev_path(path, sizeof(path), e->bdf, "resource0"), O_RDWR | O_SYNC);
	if (fd < 0)
		ktap_bail("open %s: %s", path, strerror(errno));
	e->bar.map = mmap(NULL, EDU_BUF_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (e->bar.map == MAP_FAILED)
		ktap_bail("mmap %s: %s", path, strerror(errno));
	cfg = open(pci_dev_path(path, sizeof(path), e->bdf, "config"), O_RDWR);
	if (cfg < 0 || pread(cfg, &cmd, 2, PCI_COMMAND) != 2)
		ktap_bail("read %s: %s", path, strerror(errno));
	cmd |= PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
	if (pwrite(cfg, &cmd, 2, PCI_COMMAND) != 2)
		ktap_bail("write %s: %s", path, strerror(errno));

	buf = mmap(NULL, 2 * (size_t)pg, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | MAP_LOCKED, -1, 0);
	pattern = malloc((size_t)pg);
	poison = malloc((size_t)pg);
	if (buf == MAP_FAILED || !pattern || !poison)
		ktap_bail("out of memory (or mlock): %s", strerror(errno));
	fill_pattern(pattern, (size_t)pg, pattern_key(TAG_SRC, 0, size));
	fill_pattern(poison, (size_t)pg, pattern_key(TAG_POISON, 0, size));
	memcpy(buf, pattern, (size_t)pg);
	memcpy(buf + pg, poison, (size_t)pg);
	src_pa = virt_to_phys(buf);
	dst_pa = virt_to_phys(buf + pg);
	ktap_diag("src_pa=0x%" PRIx64, src_pa);
	ktap_diag("dst_pa=0x%" PRIx64, dst_pa);

	/* 2: the device's DMA addresses are physical addresses. */
	ok = !dma_to_device(e, src_pa, size) && !dma_from_device(e, dst_pa, size);
	if (!ok)
		copy_str(why, sizeof(why), e->err);
	else
		ok = compare(buf + pg, pattern, size, "identity DMA at physical addresses", why,
			     sizeof(why));
	ktap_result(ok, 0, "identity domain: DMA at physical addresses works", why);

	/* 3: beyond the IOMMU's input range too. A bypassed endpoint
	 * (VIRTIO_IOMMU_F_BYPASS_CONFIG, ATTACH_F_BYPASS) is not translated at
	 * all; an identity domain emulated with 1:1 mappings covers only the
	 * input range (minus reserved regions), and this read faults there (the
	 * harness fails the scenario on that fault). */
	why[0] = '\0';
	ktap_diag("beyond_pa=0x%llx", IDENTITY_BEYOND_PA);
	ok = !dma_to_device(e, IDENTITY_BEYOND_PA, size);
	if (!ok)
		copy_str(why, sizeof(why), e->err);
	ktap_result(ok, 0, "identity domain: DMA beyond the IOMMU's input range completes", why);

	cmd &= (uint16_t)~PCI_COMMAND_MASTER;
	if (pwrite(cfg, &cmd, 2, PCI_COMMAND) != 2)
		ktap_diag("restore_error=bus master still on");
	close(cfg);
	munmap((void *)e->bar.map, EDU_BUF_SIZE);
	close(fd);
	set_group_type(e, old_type, NULL, 0);
}

/* ------------------------------------------------------------------ */
/* map-stress                                                          */

#define STRESS_MAX_PAGES 16
static const unsigned int stress_pages[] = { 1, 2, STRESS_MAX_PAGES };
#define NR_STRESS_SIZES (sizeof(stress_pages) / sizeof(stress_pages[0]))

struct slot {
	uint64_t iova;
	struct dmabuf buf;
};

struct stress_stats {
	uint64_t maps, unmaps, map_ns, unmap_ns, loop_ns, cycles, checks;
};

static int slot_map(struct edu *e, struct slot *s, size_t len, struct stress_stats *st)
{
	uint64_t t0 = now_ns();
	int ret = buf_map(e, &s->buf, s->iova, len);

	st->map_ns += now_ns() - t0;
	st->maps++;
	return ret;
}

static int slot_unmap(struct edu *e, struct slot *s, struct stress_stats *st)
{
	uint64_t t0 = now_ns();
	int ret = buf_unmap(e, &s->buf);

	st->unmap_ns += now_ns() - t0;
	st->unmaps++;
	return ret;
}

/* Device reads the last page of src's mapping and writes it to the first
 * page of dst's: both ends of a multi-page mapping must translate. */
static bool stress_check(struct edu *e, struct slot *src, struct slot *dst,
			 unsigned long iter, char *why, size_t wl)
{
	size_t pg = e->page;
	uint32_t count = (uint32_t)min_sz(pg, EDU_BUF_SIZE);
	uint64_t last = src->buf.maplen - pg;
	uint8_t expect[EDU_BUF_SIZE];

	fill_pattern(src->buf.va, src->buf.maplen, pattern_key(TAG_STRESS, src->iova, iter));
	memcpy(expect, src->buf.va + last, count);
	if (dma_to_device(e, src->iova + last, count)) {
		copy_str(why, wl, e->err);
		return false;
	}
	fill_pattern(dst->buf.va, pg, pattern_key(TAG_POISON, dst->iova, iter));
	if (dma_from_device(e, dst->iova, count)) {
		copy_str(why, wl, e->err);
		return false;
	}
	return compare(dst->buf.va, expect, count, "data mismatch", why, wl);
}

/* window=false: one mapping at a time (map, maybe DMA, unmap).
 * window=true: every slot stays mapped; each iteration remaps one slot with
 * a new size while its neighbours stay live, so page tables get partially
 * torn down and refilled. */
static bool stress_phase(struct edu *e, struct slot *slots, int n, bool window,
			 struct stress_stats *st, char *why, size_t wl)
{
	uint64_t t_start = now_ns(), dma_ns = 0;
	bool ok = false;
	unsigned long i;

	for (i = 0; i < opt.iterations; i++) {
		int s = (int)(i % (unsigned long)n);
		size_t len = stress_pages[(i / (unsigned long)n + (unsigned long)s) %
					  NR_STRESS_SIZES] * e->page;

		if (window && slots[s].buf.maplen && slot_unmap(e, &slots[s], st)) {
			snprintf(why, wl, "iteration %lu: %s", i, e->err);
			goto out;
		}
		if (slot_map(e, &slots[s], len, st)) {
			snprintf(why, wl, "iteration %lu: %s", i, e->err);
			goto out;
		}
		if (opt.dma_every && i % opt.dma_every == 0) {
			struct slot *dst = &slots[(s + 1) % n];
			uint64_t t0 = now_ns();
			char msg[192];
			bool good;

			if (!window || !dst->buf.maplen)
				dst = &slots[s];
			good = stress_check(e, &slots[s], dst, i, msg, sizeof(msg));
			dma_ns += now_ns() - t0;
			st->checks++;
			if (!good) {
				snprintf(why, wl, "DMA check failed at iteration %lu iova=0x%" PRIx64
					 " -> 0x%" PRIx64 ": %s", i, slots[s].iova, dst->iova, msg);
				goto out;
			}
		}
		if (!window && slot_unmap(e, &slots[s], st)) {
			snprintf(why, wl, "iteration %lu: %s", i, e->err);
			goto out;
		}
		st->cycles++;
	}
	ok = true;
out:
	for (int s = 0; s < n; s++) {
		if (slots[s].buf.maplen && slot_unmap(e, &slots[s], st) && ok) {
			snprintf(why, wl, "teardown: %s", e->err);
			ok = false;
		}
	}
	st->loop_ns += now_ns() - t_start - dma_ns;
	return ok;
}

/* Drops IOVAs that are not usable here; overlapping ones are a usage error. */
static int stress_slots(struct edu *e, struct slot *slots)
{
	uint64_t span = STRESS_MAX_PAGES * e->page;
	int n = 0;

	for (int i = 0; i < opt.nr_iovas; i++) {
		uint64_t iova = resolve_iova(e, opt.iovas[i]);

		if ((opt.iovas[i] == IOVA_HIGH && !iova) || !iova_valid(e, iova, span)) {
			ktap_diag("skipped_iova=0x%" PRIx64, iova);
			continue;
		}
		if (iova & (e->page - 1))
			ktap_bail("IOVA 0x%" PRIx64 " is not page aligned", iova);
		for (int j = 0; j < n; j++)
			if (iova < slots[j].iova + span && slots[j].iova < iova + span)
				ktap_bail("IOVAs 0x%" PRIx64 " and 0x%" PRIx64
				     " are closer than %" PRIu64 " bytes", slots[j].iova, iova, span);
		slots[n].iova = iova;
		buf_alloc(e, &slots[n].buf, span);
		n++;
	}
	return n;
}

static void cmd_map_stress(struct edu *e)
{
	struct slot slots[MAX_LIST];
	struct stress_stats st = { 0 };
	char why[320];
	int n = stress_slots(e, slots);
	bool ok;

	ktap_diag("iterations=%lu", opt.iterations);
	ktap_diag("dma_every=%lu", opt.dma_every);
	ktap_diag("slots=%d", n);
	if (!n) {
		ktap_result(0, 0, "map-stress single", "no usable IOVA");
		ktap_result(0, 0, "map-stress window", "no usable IOVA");
		return;
	}

	why[0] = '\0';
	ok = stress_phase(e, slots, n, false, &st, why, sizeof(why));
	ktap_result(ok, 0, "map-stress single", why);
	why[0] = '\0';
	ok = stress_phase(e, slots, n, true, &st, why, sizeof(why));
	ktap_result(ok, 0, "map-stress window", why);

	ktap_diag("cycles=%" PRIu64, st.cycles);
	ktap_diag("dma_checks=%" PRIu64, st.checks);
	if (st.loop_ns)
		ktap_diag("metric: map_unmap_rate=%.0f 1/s", st.cycles * 1e9 / (double)st.loop_ns);
	if (st.maps)
		ktap_diag("metric: map_us=%.1f us", st.map_ns / 1e3 / (double)st.maps);
	if (st.unmaps)
		ktap_diag("metric: unmap_us=%.1f us", st.unmap_ns / 1e3 / (double)st.unmaps);
}

/* ------------------------------------------------------------------ */
/* command line                                                        */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: edu-dma [--bdf BDF] [--backend type1|iommufd] [--seed N] COMMAND [options]\n"
		"commands:\n"
		"  info\n"
		"  roundtrip [--sizes 4,64,512,4096] [--iovas LIST]   (LIST may use 'high')\n"
		"  fault-unmapped [--iova X] [--size N]\n"
		"  after-unmap [--iova X] [--size N]\n"
		"  map-stress [--iterations N] [--iovas LIST] [--dma-every K]\n"
		"  perm [--iova X] [--size N] [--wo-read blocked|allowed]\n"
		"  isolation --peer BDF [--iova X] [--size N]\n"
		"  identity --bdf BDF [--size N]   (no VFIO: identity domain, physical addresses)\n"
		"  fuzz [--length N] [--ops 'map:IOVA:LEN:POOL:r|w|rw;unmap:IOVA:LEN;dw:IOVA:LEN:KEY;dr:IOVA:LEN']\n"
		"exit: 0 all ok, 1 a test failed, 2 bail out\n");
}

static __attribute__((noreturn, format(printf, 1, 2))) void usage_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	ktap_vbail_line("bad arguments: ", fmt, ap);
	va_end(ap);
	usage(stderr);
	exit(2);
}

#include "fuzz.h"

static uint64_t parse_u64(const char *opt_name, const char *s)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s || *end || *s == '-')
		usage_error("%s: '%s' is not a number", opt_name, s);
	return v;
}

/* Comma-separated list; "high" (IOVA lists only) means the computed high IOVA. */
static int parse_list(const char *opt_name, const char *s, uint64_t *out, bool allow_high)
{
	char *copy = strdup(s), *save = NULL, *tok;
	int n = 0;

	if (!copy)
		ktap_bail("out of memory");
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (n == MAX_LIST)
			usage_error("%s: more than %d entries", opt_name, MAX_LIST);
		if (allow_high && !strcmp(tok, "high"))
			out[n++] = IOVA_HIGH;
		else
			out[n++] = parse_u64(opt_name, tok);
	}
	free(copy);
	if (!n)
		usage_error("%s: empty list", opt_name);
	return n;
}

static void parse_sizes(const char *s)
{
	uint64_t v[MAX_LIST];

	opt.nr_sizes = parse_list("--sizes", s, v, false);
	for (int i = 0; i < opt.nr_sizes; i++) {
		if (!v[i] || v[i] > EDU_BUF_SIZE)
			usage_error("--sizes: %" PRIu64 " not in 1..%u", v[i], EDU_BUF_SIZE);
		opt.sizes[i] = (uint32_t)v[i];
	}
}

static void parse_args(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *val = NULL;
		char name[32];

		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			exit(0);
		}
		if (strncmp(a, "--", 2)) {
			if (opt.cmd)
				usage_error("unexpected argument '%s'", a);
			opt.cmd = a;
			continue;
		}
		val = opt_split(argc, argv, &i, name, sizeof(name));
		if (!val)
			usage_error("%s needs a value", a);

		if (!strcmp(name, "--bdf")) {
			opt.bdf = val;
		} else if (!strcmp(name, "--backend")) {
			if (!strcmp(val, "type1"))
				opt.backend = BACKEND_TYPE1;
			else if (!strcmp(val, "iommufd"))
				opt.backend = BACKEND_IOMMUFD;
			else
				usage_error("--backend: '%s' is not type1 or iommufd", val);
		} else if (!strcmp(name, "--seed")) {
			opt.seed = parse_u64(name, val);
		} else if (!strcmp(name, "--sizes")) {
			parse_sizes(val);
		} else if (!strcmp(name, "--iovas")) {
			opt.nr_iovas = parse_list(name, val, opt.iovas, true);
		} else if (!strcmp(name, "--iova")) {
			opt.iova = parse_u64(name, val);
			opt.iova_set = true;
		} else if (!strcmp(name, "--size")) {
			uint64_t v = parse_u64(name, val);

			if (!v || v > EDU_BUF_SIZE)
				usage_error("--size: %" PRIu64 " not in 1..%u", v, EDU_BUF_SIZE);
			opt.size = (uint32_t)v;
		} else if (!strcmp(name, "--iterations")) {
			opt.iterations = parse_u64(name, val);
		} else if (!strcmp(name, "--dma-every")) {
			opt.dma_every = parse_u64(name, val);
		} else if (!strcmp(name, "--ops")) {
			opt.fuzz_ops = val;
		} else if (!strcmp(name, "--length")) {
			opt.fuzz_length = parse_u64(name, val);
			if (!opt.fuzz_length || opt.fuzz_length > FZ_MAX_OPS)
				usage_error("--length: %lu not in 1..%d", opt.fuzz_length, FZ_MAX_OPS);
		} else if (!strcmp(name, "--peer")) {
			opt.peer = val;
		} else if (!strcmp(name, "--wo-read")) {
			if (!strcmp(val, "allowed"))
				opt.wo_read_allowed = true;
			else if (!strcmp(val, "blocked"))
				opt.wo_read_allowed = false;
			else
				usage_error("--wo-read: '%s' is not blocked or allowed", val);
		} else {
			usage_error("unknown option '%s'", name);
		}
	}
	if (!opt.cmd)
		usage_error("no command");
}

struct command {
	const char *name;
	void (*run)(struct edu *e);
	int (*plan)(void);
	const char *default_iovas;
	bool no_vfio; /* the command opens the device itself (sysfs, no VFIO) */
};

static int plan_one(void)
{
	return 1;
}

static int plan_two(void)
{
	return 2;
}

static int plan_three(void)
{
	return 3;
}

static int plan_four(void)
{
	return 4;
}

static int plan_five(void)
{
	return 5;
}

static int plan_roundtrip(void)
{
	return opt.nr_iovas * opt.nr_sizes;
}

static const struct command commands[] = {
	{ "info", cmd_info, plan_one, NULL, false },
	{ "roundtrip", cmd_roundtrip, plan_roundtrip, "0x100000,0x1fff000,high", false },
	{ "fault-unmapped", cmd_fault_unmapped, plan_three, NULL, false },
	{ "after-unmap", cmd_after_unmap, plan_three, NULL, false },
	{ "perm", cmd_perm, plan_five, NULL, false },
	{ "isolation", cmd_isolation, plan_four, NULL, false },
	{ "identity", cmd_identity, plan_three, NULL, true },
	{ "fuzz", cmd_fuzz, plan_one, NULL, false },
	{ "map-stress", cmd_map_stress, plan_two,
	  "0x100000,0x1ff000,0x400000,0x1fff000,0x40000000,high", false },
};

int main(int argc, char **argv)
{
	const struct command *c = NULL;
	static struct edu e;

	parse_args(argc, argv);
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(opt.cmd, commands[i].name))
			c = &commands[i];
	if (!c)
		usage_error("unknown command '%s'", opt.cmd);
	if (!opt.nr_sizes)
		parse_sizes("4,64,512,4096");
	if (!opt.nr_iovas && c->default_iovas)
		opt.nr_iovas = parse_list("--iovas", c->default_iovas, opt.iovas, true);

	ktap_header(c->plan());
	if (!c->no_vfio) {
		edu_setup(&e, opt.bdf);
		print_setup(&e);
	}
	c->run(&e);
	/* Closing the fds on exit unmaps everything and releases the device. */
	return ktap_exit_code();
}
