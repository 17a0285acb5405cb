/*
 * iommufd-nest: act as a VMM that gives QEMU's "edu" PCI device (1234:11e8)
 * to a guest through iommufd's nested SMMUv3 support, and check each layer
 * with real device DMA. Output is KTAP v1 (see README.md).
 *
 *   hw-info    IOMMU_GET_HW_INFO: the SMMUv3 ID registers agree with the
 *              profile's stages (--expect-s1/--expect-s2 true|false).
 *   s2-parent  IOMMU_HWPT_ALLOC(NEST_PARENT): a stage-2 domain where the SMMU
 *              nests, refused where it does not. On the stage 2: DMA round
 *              trip, unmap, and DMA to the old IOVA (changes nothing; the SMMU
 *              reports it: captures sid, fault_iova, fault_size).
 *   viommu     IOMMU_VIOMMU_ALLOC(ARM_SMMUV3) on the parent, a vDEVICE, and a
 *              nested HWPT whose vSTE points at a CD and stage-1 tables built
 *              here in memory mapped through the parent. DMA through both
 *              stages lands where the stage 1 says; after a stage-1 change and
 *              a TLBI_NH_VA through the vIOMMU it lands at the new page. Where
 *              the kernel refuses the vIOMMU, the tests SKIP naming the missing
 *              feature read from the ID registers.
 *
 * The edu and VFIO plumbing (vfio-pci bind, VFIO cdev, BAR0 and DMA
 * registers) comes from common/edu.h and common/vfio.h.
 *
 * Exit code: 0 all tests ok (or skipped), 1 some test not ok, 2 bail out.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "args.h"
#include "edu.h"
#include "ktap.h"
#include "pci.h"
#include "vfio.h"
#include "nest_uapi.h"

#define PAGE 4096ul

/* s2-parent: two pages at fixed IOVAs of the stage 2. */
#define S2_SRC_IOVA 0x3000000ull
#define S2_DST_IOVA 0x3001000ull
#define FAULT_SIZE 16u

/* viommu: "guest RAM" at IPA GUEST_IPA, mapped through the parent. */
#define GUEST_IPA 0x20000000ull /* clear of the SMMU MSI window at 0x8000000 */
enum { PG_CD, PG_L1, PG_L2, PG_L3, PG_SRC, PG_A, PG_B, GUEST_PAGES };
/* Stage-1 VAs: neither is mapped in the stage 2, so a DMA that skipped the
 * stage 1 would fault instead of landing anywhere. */
#define S1_VA_BASE 0x40200000ull /* L1 index 1, L2 index 1 */
#define S1_VA_SRC (S1_VA_BASE + 0 * PAGE)
#define S1_VA_DST (S1_VA_BASE + 1 * PAGE)
#define S1_T0SZ 25 /* 39-bit VA: the walk starts at level 1 */
#define S1_ASID 1
#define S1_MAIR 0xffull /* attr 0: normal memory, write-back */

static struct {
	const char *cmd;
	const char *bdf;
	int expect_s1, expect_s2; /* -1: not given */
	uint64_t seed;
} opt = { .expect_s1 = -1, .expect_s2 = -1, .seed = 0x5eed };

struct edu {
	char bdf[32];
	unsigned int sid;
	struct vfio_iommufd vf;
	struct edu_bar bar;
	struct iommu_hw_info_arm_smmuv3 info;
	char err[256];
};

/* ------------------------------------------------------------------ */
/* small utilities                                                     */

static uint64_t splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Distinct data per purpose, so leftovers never match. */
static void fill_pattern(void *buf, size_t len, uint64_t tag)
{
	uint64_t s = opt.seed ^ (tag << 48);

	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = splitmix64(&s);

		memcpy((uint8_t *)buf + i, &v, len - i < 8 ? len - i : 8);
	}
}

static void *page_alloc(size_t pages)
{
	void *p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	if (p == MAP_FAILED)
		ktap_bail("mmap %zu pages: %s", pages, strerror(errno));
	memset(p, 0, pages * PAGE);
	return p;
}

/* ------------------------------------------------------------------ */
/* edu through VFIO + iommufd                                          */

/* BAR0 mmapped, bus mastering on: after an attach. */
static void device_setup(struct edu *e)
{
	struct vfio_region_info bar;

	e->bar.map = vfio_region_map(e->vf.device, VFIO_PCI_BAR0_REGION_INDEX, "BAR0",
				     EDU_REGS_END, true, &bar);
	e->bar.fd = e->vf.device;
	e->bar.offset = bar.offset;
	vfio_pci_set_master(e->vf.device);
}

/* One edu DMA (see edu_dma()); 0, or -1 with e->err set. */
static int dma(struct edu *e, bool to_ram, uint64_t ram, uint32_t count)
{
	if (!edu_dma(&e->bar, to_ram, ram, count, NULL))
		return 0;
	copy_str(e->err, sizeof(e->err), e->bar.err);
	return -1;
}

/* iommufd bound, an IOAS allocated, nothing attached yet. */
static void edu_open(struct edu *e)
{
	memset(e, 0, sizeof(*e));
	edu_find(opt.bdf, e->bdf, sizeof(e->bdf), &e->sid);
	vfio_bind_pci(e->bdf);
	vfio_iommufd_open(e->bdf, &e->vf);
	ktap_diag("bdf=%s", e->bdf);
	ktap_diag("sid=0x%x", e->sid);
}

static int ioas_map(struct edu *e, uint64_t iova, void *va, size_t len)
{
	struct iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
			 IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = e->vf.ioas_id,
		.user_va = (uintptr_t)va,
		.length = len,
		.iova = iova,
	};

	return ioctl(e->vf.iommufd, IOMMU_IOAS_MAP, &m);
}

/* 0, or -1 with e->err set (a short unmap counts as a failure). */
static int ioas_unmap(struct edu *e, uint64_t iova, size_t len)
{
	struct iommu_ioas_unmap u = {
		.size = sizeof(u), .ioas_id = e->vf.ioas_id, .iova = iova, .length = len,
	};

	if (ioctl(e->vf.iommufd, IOMMU_IOAS_UNMAP, &u)) {
		snprintf(e->err, sizeof(e->err), "IOMMU_IOAS_UNMAP: %s", strerror(errno));
		return -1;
	}
	if (u.length != len) {
		snprintf(e->err, sizeof(e->err), "IOMMU_IOAS_UNMAP unmapped 0x%llx of 0x%zx bytes",
			 (unsigned long long)u.length, len);
		return -1;
	}
	return 0;
}

/* IOMMU_GET_HW_INFO into e->info; the ioctl's errno, or 0. */
static int hw_info(struct edu *e, struct iommu_hw_info *hi)
{
	memset(hi, 0, sizeof(*hi));
	hi->size = sizeof(*hi);
	hi->dev_id = e->vf.devid;
	hi->data_len = sizeof(e->info);
	hi->data_uptr = (uintptr_t)&e->info;
	return ioctl(e->vf.iommufd, IOMMU_GET_HW_INFO, hi) ? errno : 0;
}

static void hw_info_or_bail(struct edu *e)
{
	struct iommu_hw_info hi;
	int err = hw_info(e, &hi);

	if (err)
		ktap_bail("IOMMU_GET_HW_INFO: %s (kernel without CONFIG_ARM_SMMU_V3_IOMMUFD?)",
			  strerror(err));
	if (hi.out_data_type != IOMMU_HW_INFO_TYPE_ARM_SMMUV3)
		ktap_bail("IOMMU_GET_HW_INFO: data type %u, not ARM_SMMUV3 (%u)", hi.out_data_type,
			  IOMMU_HW_INFO_TYPE_ARM_SMMUV3);
}

static bool smmu_nests(const struct edu *e)
{
	return (e->info.idr[0] & IDR0_S1P) && (e->info.idr[0] & IDR0_S2P);
}

/* A NEST_PARENT stage-2 HWPT on the IOAS; the ioctl's errno, or 0. */
static int alloc_nest_parent(struct edu *e, uint32_t *hwpt_id)
{
	struct iommu_hwpt_alloc a = {
		.size = sizeof(a),
		.flags = IOMMU_HWPT_ALLOC_NEST_PARENT,
		.dev_id = e->vf.devid,
		.pt_id = e->vf.ioas_id,
		.data_type = IOMMU_HWPT_DATA_NONE,
	};

	if (ioctl(e->vf.iommufd, IOMMU_HWPT_ALLOC, &a))
		return errno;
	*hwpt_id = a.out_hwpt_id;
	return 0;
}

static bool same(const void *a, const void *b, size_t len, const char *what, char *why,
		 size_t whylen)
{
	const uint8_t *x = a, *y = b;
	size_t n = 0, first = len;

	for (size_t i = 0; i < len; i++)
		if (x[i] != y[i] && !n++)
			first = i;
	if (!n)
		return true;
	snprintf(why, whylen, "%s: %zu of %zu bytes differ, first at offset %zu", what, n, len,
		 first);
	return false;
}

/* ------------------------------------------------------------------ */
/* hw-info                                                             */

static void cmd_hw_info(struct edu *e)
{
	struct iommu_hw_info hi;
	const struct iommu_hw_info_arm_smmuv3 *d = &e->info;
	char why[160];
	int err = hw_info(e, &hi), s1, s2, ttf;
	bool ok;

	snprintf(why, sizeof(why), "%s", err ? strerror(err) : "");
	ok = !err && hi.out_data_type == IOMMU_HW_INFO_TYPE_ARM_SMMUV3 &&
	     hi.data_len == sizeof(*d);
	if (!err && !ok)
		snprintf(why, sizeof(why), "data type %u length %u, want %u and %zu",
			 hi.out_data_type, hi.data_len, IOMMU_HW_INFO_TYPE_ARM_SMMUV3, sizeof(*d));
	ktap_result(ok, 0, "hw-info: IOMMU_GET_HW_INFO returns ARM_SMMUV3 data", why);
	if (!ok) {
		ktap_result(0, 1, "hw-info: IDR0.S1P agrees with the profile", "no hw info");
		ktap_result(0, 1, "hw-info: IDR0.S2P agrees with the profile", "no hw info");
		ktap_result(0, 1, "hw-info: IDR0.TTF has AArch64", "no hw info");
		return;
	}
	for (int i = 0; i < 6; i++)
		ktap_diag("idr%d=0x%08x", i, d->idr[i]);
	ktap_diag("iidr=0x%08x", d->iidr);
	ktap_diag("aidr=0x%08x", d->aidr);
	s1 = !!(d->idr[0] & IDR0_S1P);
	s2 = !!(d->idr[0] & IDR0_S2P);
	ttf = (d->idr[0] >> IDR0_TTF_SHIFT) & 3;
	ktap_diag("s1p=%d", s1);
	ktap_diag("s2p=%d", s2);
	ktap_diag("nesting=%d", s1 && s2);
	ktap_diag("fwb=%d", !!(d->idr[3] & IDR3_FWB));
	ktap_diag("ril=%d", !!(d->idr[3] & IDR3_RIL));
	ktap_diag("oas_field=%u", d->idr[5] & IDR5_OAS_MASK);
	snprintf(why, sizeof(why), "IDR0.S1P=%d, profile says stage 1 %s", s1,
		 opt.expect_s1 ? "present" : "absent");
	ktap_result(s1 == opt.expect_s1, 0, "hw-info: IDR0.S1P agrees with the profile", why);
	snprintf(why, sizeof(why), "IDR0.S2P=%d, profile says stage 2 %s", s2,
		 opt.expect_s2 ? "present" : "absent");
	ktap_result(s2 == opt.expect_s2, 0, "hw-info: IDR0.S2P agrees with the profile", why);
	snprintf(why, sizeof(why), "IDR0.TTF=%d", ttf);
	ktap_result(ttf & 2, 0, "hw-info: IDR0.TTF has AArch64", why);
}

/* ------------------------------------------------------------------ */
/* s2-parent                                                           */

static const char *const s2_tests[] = {
	"s2-parent: NEST_PARENT stage 2 given where the SMMU nests, refused where not",
	"s2-parent: DMA round trip through the stage 2",
	"s2-parent: DMA after unmap changes nothing",
};
#define NR_S2_TESTS 3

static void cmd_s2_parent(struct edu *e)
{
	uint8_t *src = page_alloc(1), *dst = page_alloc(1), *want = page_alloc(1);
	uint8_t *poison = page_alloc(1);
	char why[256] = "";
	uint32_t hwpt;
	int err;
	bool ok;

	hw_info_or_bail(e);
	err = alloc_nest_parent(e, &hwpt);
	ktap_diag("nest_parent=%s", err ? strerror(err) : "allocated");
	if (!smmu_nests(e)) {
		/* The kernel must not hand out a stage 2 for nesting that the SMMU
		 * cannot nest under (ARM_SMMU_FEAT_NESTING needs S1P and S2P). */
		snprintf(why, sizeof(why), "%s on an SMMU with IDR0.S1P=%d S2P=%d, want EOPNOTSUPP",
			 err ? strerror(err) : "allocated", !!(e->info.idr[0] & IDR0_S1P),
			 !!(e->info.idr[0] & IDR0_S2P));
		ktap_result(err == EOPNOTSUPP, 0, s2_tests[0], why);
		snprintf(why, sizeof(why), "no nesting: SMMU IDR0.S1P=%d S2P=%d",
			 !!(e->info.idr[0] & IDR0_S1P), !!(e->info.idr[0] & IDR0_S2P));
		for (int i = 1; i < NR_S2_TESTS; i++)
			ktap_result(0, 1, s2_tests[i], why);
		return;
	}
	snprintf(why, sizeof(why), "IOMMU_HWPT_ALLOC(NEST_PARENT): %s", strerror(err));
	ktap_result(!err, 0, s2_tests[0], why);
	if (err) {
		for (int i = 1; i < NR_S2_TESTS; i++)
			ktap_result(0, 1, s2_tests[i], "no NEST_PARENT stage 2");
		return;
	}
	ktap_diag("nest_parent_hwpt=%u", hwpt);
	if (vfio_attach_pt(e->vf.device, hwpt))
		ktap_bail("VFIO_DEVICE_ATTACH_IOMMUFD_PT(hwpt %u): %s", hwpt, strerror(errno));
	device_setup(e);
	if (ioas_map(e, S2_SRC_IOVA, src, PAGE) || ioas_map(e, S2_DST_IOVA, dst, PAGE))
		ktap_bail("IOMMU_IOAS_MAP: %s", strerror(errno));

	/* Round trip through the stage 2. */
	fill_pattern(want, PAGE, 1);
	fill_pattern(poison, PAGE, 2);
	memcpy(src, want, PAGE);
	memcpy(dst, poison, PAGE);
	why[0] = '\0';
	ok = !dma(e, false, S2_SRC_IOVA, EDU_BUF_SIZE) &&
	     !dma(e, true, S2_DST_IOVA, EDU_BUF_SIZE);
	if (!ok)
		snprintf(why, sizeof(why), "%s", e->err);
	else
		ok = same(dst, want, PAGE, "destination", why, sizeof(why));
	ktap_result(ok, 0, s2_tests[1], why);
	if (!ok) {
		ktap_result(0, 1, s2_tests[2], "round trip failed");
		return;
	}

	/* Unmap the destination; the device's write to the old IOVA must not
	 * reach the page (still ours, still poisoned) and must fault. */
	memcpy(dst, poison, PAGE);
	why[0] = '\0';
	if (ioas_unmap(e, S2_DST_IOVA, PAGE)) {
		ktap_result(0, 0, s2_tests[2], e->err);
		return;
	}
	ktap_diag("fault_iova=0x%llx", S2_DST_IOVA);
	ktap_diag("fault_size=%u", FAULT_SIZE);
	ok = !dma(e, true, S2_DST_IOVA, FAULT_SIZE);
	if (!ok)
		snprintf(why, sizeof(why), "%s", e->err);
	else if (!same(dst, poison, PAGE, "unmapped page", why, sizeof(why))) {
		ok = false;
		strncat(why, ": the device wrote through a stage-2 mapping that was unmapped",
			sizeof(why) - strlen(why) - 1);
	}
	ktap_result(ok, 0, s2_tests[2], why);
}

/* ------------------------------------------------------------------ */
/* viommu                                                              */

struct guest {
	uint8_t *ram; /* GUEST_PAGES pages at IPA GUEST_IPA */
	uint32_t parent, viommu, vdev, nested;
};

static uint64_t *pg64(struct guest *g, int page)
{
	return (uint64_t *)(g->ram + (size_t)page * PAGE);
}

static uint64_t ipa(int page)
{
	return GUEST_IPA + (uint64_t)page * PAGE;
}

static uint64_t s1_page_pte(int page)
{
	return (ipa(page) & PTE_ADDR_MASK) | PTE_VALID_TABLE | PTE_AP_UNPRIV | PTE_SH_ISH |
	       PTE_AF | PTE_NG;
}

/* The guest's stage 1: CD -> L1 -> L2 -> L3, VA_SRC -> SRC, VA_DST -> A. */
static void build_stage1(struct edu *e, struct guest *g)
{
	uint64_t *cd = pg64(g, PG_CD);
	unsigned int l1 = (S1_VA_BASE >> 30) & 511, l2 = (S1_VA_BASE >> 21) & 511;
	unsigned int l3 = (S1_VA_BASE >> 12) & 511;

	pg64(g, PG_L1)[l1] = (ipa(PG_L2) & PTE_ADDR_MASK) | PTE_VALID_TABLE;
	pg64(g, PG_L2)[l2] = (ipa(PG_L3) & PTE_ADDR_MASK) | PTE_VALID_TABLE;
	pg64(g, PG_L3)[l3] = s1_page_pte(PG_SRC);
	pg64(g, PG_L3)[l3 + 1] = s1_page_pte(PG_A);

	cd[0] = ((uint64_t)S1_T0SZ << CD0_T0SZ_SHIFT) | (0ull << CD0_TG0_SHIFT) |
		(1ull << CD0_IRGN0_SHIFT) | (1ull << CD0_ORGN0_SHIFT) | (SH_ISH << CD0_SH0_SHIFT) |
		CD0_EPD1 | CD0_V | ((uint64_t)(e->info.idr[5] & IDR5_OAS_MASK) << CD0_IPS_SHIFT) |
		CD0_AA64 | CD0_R | CD0_A | CD0_ASET | ((uint64_t)S1_ASID << CD0_ASID_SHIFT);
	cd[1] = ipa(PG_L1) & CD1_TTB0_MASK;
	cd[2] = 0;
	cd[3] = S1_MAIR;
	io_barrier();
}

/* TLBI_NH_VA for VA_DST through the vIOMMU; errno or 0. */
static int invalidate_va(struct edu *e, struct guest *g, uint64_t va)
{
	struct iommu_viommu_arm_smmuv3_invalidate cmd = {
		.cmd = { CMDQ_OP_TLBI_NH_VA | ((uint64_t)S1_ASID << CMDQ_TLBI_0_ASID_SHIFT),
			 (va & ~(PAGE - 1)) | CMDQ_TLBI_1_LEAF },
	};
	struct iommu_hwpt_invalidate inv = {
		.size = sizeof(inv),
		.hwpt_id = g->viommu,
		.data_uptr = (uintptr_t)&cmd,
		.data_type = IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
		.entry_len = sizeof(cmd),
		.entry_num = 1,
	};

	if (ioctl(e->vf.iommufd, IOMMU_HWPT_INVALIDATE, &inv))
		return errno;
	return inv.entry_num == 1 ? 0 : EIO;
}

static const char *const viommu_tests[] = {
	"viommu: IOMMU_VIOMMU_ALLOC(ARM_SMMUV3) on the NEST_PARENT stage 2",
	"viommu: vDEVICE and nested HWPT (vSTE -> CD) attached",
	"viommu: DMA through stage 1 + stage 2 lands where the stage 1 says",
	"viommu: after a stage-1 change and TLBI_NH_VA, DMA lands at the new page",
};
#define NR_VIOMMU_TESTS 4

static void skip_rest(int from, const char *reason)
{
	for (int i = from; i < NR_VIOMMU_TESTS; i++)
		ktap_result(0, 1, viommu_tests[i], reason);
}

static void cmd_viommu(struct edu *e)
{
	struct guest g = { 0 };
	struct iommu_viommu_alloc va;
	struct iommu_vdevice_alloc vd;
	struct iommu_hwpt_arm_smmuv3 vste;
	struct iommu_hwpt_alloc na;
	uint8_t *want1 = page_alloc(1), *want2 = page_alloc(1), *want3 = page_alloc(1);
	uint8_t *poison = page_alloc(1);
	char why[320] = "";
	unsigned int l3 = (S1_VA_BASE >> 12) & 511;
	const char *stale;
	int err;
	bool ok;

	hw_info_or_bail(e);
	if (!smmu_nests(e)) {
		snprintf(why, sizeof(why), "no nesting: SMMU IDR0.S1P=%d S2P=%d",
			 !!(e->info.idr[0] & IDR0_S1P), !!(e->info.idr[0] & IDR0_S2P));
		skip_rest(0, why);
		return;
	}
	err = alloc_nest_parent(e, &g.parent);
	if (err)
		ktap_bail("IOMMU_HWPT_ALLOC(NEST_PARENT): %s (the s2-parent step checks this)",
			  strerror(err));
	if (vfio_attach_pt(e->vf.device, g.parent))
		ktap_bail("VFIO_DEVICE_ATTACH_IOMMUFD_PT(parent %u): %s", g.parent, strerror(errno));

	memset(&va, 0, sizeof(va));
	va.size = sizeof(va);
	va.type = IOMMU_VIOMMU_TYPE_ARM_SMMUV3;
	va.dev_id = e->vf.devid;
	va.hwpt_id = g.parent;
	ktap_diag("fwb=%d", !!(e->info.idr[3] & IDR3_FWB));
	if (ioctl(e->vf.iommufd, IOMMU_VIOMMU_ALLOC, &va)) {
		err = errno;
		ktap_diag("viommu_alloc=%s", strerror(err));
		if (err == EOPNOTSUPP && !(e->info.idr[3] & IDR3_FWB)) {
			/* 7.3 wants S2FWB (or a CANWBS device, an ACPI IORT flag) so
			 * that the guest's stage-1 attributes cannot make DMA
			 * non-coherent behind VFIO's back. */
			snprintf(why, sizeof(why),
				 "kernel refused the vIOMMU (%s): SMMU_IDR3.FWB=0, no S2FWB"
				 " (and the device is not CANWBS)", strerror(err));
			skip_rest(0, why);
			return;
		}
		snprintf(why, sizeof(why), "IOMMU_VIOMMU_ALLOC: %s with IDR3.FWB=%d", strerror(err),
			 !!(e->info.idr[3] & IDR3_FWB));
		ktap_result(0, 0, viommu_tests[0], why);
		skip_rest(1, "no vIOMMU");
		return;
	}
	g.viommu = va.out_viommu_id;
	ktap_diag("viommu_alloc=ok");
	ktap_result(1, 0, viommu_tests[0], NULL);

	/* Guest RAM, its stage 1 and data pages, mapped through the parent. */
	g.ram = page_alloc(GUEST_PAGES);
	build_stage1(e, &g);
	if (ioas_map(e, GUEST_IPA, g.ram, GUEST_PAGES * PAGE))
		ktap_bail("IOMMU_IOAS_MAP(guest RAM at 0x%llx): %s", GUEST_IPA, strerror(errno));
	ktap_diag("guest_ipa=0x%llx", GUEST_IPA);
	ktap_diag("s1_va_src=0x%llx", S1_VA_SRC);
	ktap_diag("s1_va_dst=0x%llx", S1_VA_DST);

	memset(&vd, 0, sizeof(vd));
	vd.size = sizeof(vd);
	vd.viommu_id = g.viommu;
	vd.dev_id = e->vf.devid;
	vd.virt_id = e->sid; /* the vSID the guest would see */
	memset(&vste, 0, sizeof(vste));
	vste.ste[0] = STE0_V | (STE0_CFG_S1_TRANS << STE0_CFG_SHIFT) |
		      (ipa(PG_CD) & STE0_S1CTXPTR_MASK); /* S1Fmt linear, S1CDMax 0 */
	vste.ste[1] = (STE1_CACHE_WBRA << STE1_S1CIR_SHIFT) | (STE1_CACHE_WBRA << STE1_S1COR_SHIFT) |
		      (SH_ISH << STE1_S1CSH_SHIFT);
	memset(&na, 0, sizeof(na));
	na.size = sizeof(na);
	na.dev_id = e->vf.devid;
	na.data_type = IOMMU_HWPT_DATA_ARM_SMMUV3;
	na.data_len = sizeof(vste);
	na.data_uptr = (uintptr_t)&vste;
	why[0] = '\0';
	if (ioctl(e->vf.iommufd, IOMMU_VDEVICE_ALLOC, &vd))
		snprintf(why, sizeof(why), "IOMMU_VDEVICE_ALLOC: %s", strerror(errno));
	else if ((na.pt_id = g.viommu), ioctl(e->vf.iommufd, IOMMU_HWPT_ALLOC, &na))
		snprintf(why, sizeof(why), "IOMMU_HWPT_ALLOC(nested, vSTE 0x%llx 0x%llx): %s",
			 (unsigned long long)vste.ste[0], (unsigned long long)vste.ste[1],
			 strerror(errno));
	else if (vfio_attach_pt(e->vf.device, na.out_hwpt_id))
		snprintf(why, sizeof(why), "attach nested HWPT %u: %s", na.out_hwpt_id,
			 strerror(errno));
	ok = !why[0];
	ktap_diag("vste=0x%016llx,0x%016llx", (unsigned long long)vste.ste[0],
		  (unsigned long long)vste.ste[1]);
	ktap_result(ok, 0, viommu_tests[1], why);
	if (!ok) {
		skip_rest(2, "no nested HWPT");
		return;
	}
	device_setup(e);

	/* DMA through both stages: the device reads VA_SRC and writes VA_DST,
	 * which the stage 1 sends to page A (IPA) and the stage 2 to our page. */
	fill_pattern(want1, PAGE, 11);
	fill_pattern(poison, PAGE, 12);
	memcpy(g.ram + PG_SRC * PAGE, want1, PAGE);
	memcpy(g.ram + PG_A * PAGE, poison, PAGE);
	memcpy(g.ram + PG_B * PAGE, poison, PAGE);
	why[0] = '\0';
	ok = !dma(e, false, S1_VA_SRC, EDU_BUF_SIZE) && !dma(e, true, S1_VA_DST, EDU_BUF_SIZE);
	if (!ok)
		snprintf(why, sizeof(why), "%s", e->err);
	else
		ok = same(g.ram + PG_A * PAGE, want1, PAGE, "stage-1 target page A", why,
			  sizeof(why)) &&
		     same(g.ram + PG_B * PAGE, poison, PAGE, "page B (not mapped yet)", why,
			  sizeof(why));
	ktap_result(ok, 0, viommu_tests[2], why);
	if (!ok) {
		skip_rest(3, "DMA through both stages failed");
		return;
	}

	/* The guest moves VA_DST from page A to page B. Before the TLBI the
	 * SMMU may still use the old translation (reported, not judged). */
	pg64(&g, PG_L3)[l3 + 1] = s1_page_pte(PG_B);
	io_barrier();
	fill_pattern(want2, EDU_BUF_SIZE, 13);
	memcpy(g.ram + PG_SRC * PAGE, want2, PAGE);
	memcpy(g.ram + PG_A * PAGE, poison, PAGE);
	if (!dma(e, false, S1_VA_SRC, EDU_BUF_SIZE) && !dma(e, true, S1_VA_DST, EDU_BUF_SIZE))
		stale = !memcmp(g.ram + PG_A * PAGE, want2, PAGE) ? "old-page" :
			!memcmp(g.ram + PG_B * PAGE, want2, PAGE) ? "new-page" : "neither";
	else
		stale = "dma-error";
	ktap_diag("before_tlbi=%s", stale);

	err = invalidate_va(e, &g, S1_VA_DST);
	fill_pattern(want3, EDU_BUF_SIZE, 14);
	memcpy(g.ram + PG_SRC * PAGE, want3, PAGE);
	memcpy(g.ram + PG_A * PAGE, poison, PAGE);
	memcpy(g.ram + PG_B * PAGE, poison, PAGE);
	why[0] = '\0';
	if (err) {
		snprintf(why, sizeof(why), "IOMMU_HWPT_INVALIDATE(vIOMMU, TLBI_NH_VA): %s",
			 strerror(err));
		ok = false;
	} else if (dma(e, false, S1_VA_SRC, EDU_BUF_SIZE) ||
		   dma(e, true, S1_VA_DST, EDU_BUF_SIZE)) {
		snprintf(why, sizeof(why), "%s", e->err);
		ok = false;
	} else {
		ok = same(g.ram + PG_A * PAGE, poison, PAGE,
			  "old page A changed after TLBI_NH_VA (stale stage-1 translation)", why,
			  sizeof(why)) &&
		     same(g.ram + PG_B * PAGE, want3, PAGE, "new page B", why, sizeof(why));
	}
	ktap_result(ok, 0, viommu_tests[3], why);
}

/* ------------------------------------------------------------------ */
/* main                                                                */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: iommufd-nest [--bdf BDF] [--seed N] --expect-s1 true|false"
		" --expect-s2 true|false hw-info|s2-parent|viommu\n");
}

static __attribute__((noreturn)) void usage_error(const char *msg, const char *arg)
{
	printf("Bail out! usage: %s%s\n", msg, arg ? arg : "");
	fflush(stdout);
	usage(stderr);
	exit(2);
}

static int parse_bool(const char *name, const char *v)
{
	if (!strcmp(v, "true") || !strcmp(v, "1"))
		return 1;
	if (!strcmp(v, "false") || !strcmp(v, "0"))
		return 0;
	usage_error(name, ": want true or false");
}

static void parse_args(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		char name[32];
		const char *val;
		char *end;

		if (strncmp(argv[i], "--", 2)) {
			if (opt.cmd)
				usage_error("extra argument ", argv[i]);
			opt.cmd = argv[i];
			continue;
		}
		if (!strcmp(argv[i], "--help")) {
			usage(stdout);
			exit(0);
		}
		val = opt_split(argc, argv, &i, name, sizeof(name));
		if (!val)
			usage_error("missing value for ", name);
		if (!strcmp(name, "--bdf")) {
			opt.bdf = val;
		} else if (!strcmp(name, "--expect-s1")) {
			opt.expect_s1 = parse_bool("--expect-s1", val);
		} else if (!strcmp(name, "--expect-s2")) {
			opt.expect_s2 = parse_bool("--expect-s2", val);
		} else if (!strcmp(name, "--seed")) {
			opt.seed = strtoull(val, &end, 0);
			if (*end)
				usage_error("--seed: not a number: ", val);
		} else {
			usage_error("unknown option ", name);
		}
	}
	if (!opt.cmd)
		usage_error("no command", NULL);
	if (opt.expect_s1 < 0 || opt.expect_s2 < 0)
		usage_error("--expect-s1 and --expect-s2 are required", NULL);
}

int main(int argc, char **argv)
{
	struct edu e;

	setvbuf(stdout, NULL, _IOLBF, 0);
	parse_args(argc, argv);
	if (!strcmp(opt.cmd, "hw-info")) {
		ktap_header(4);
		edu_open(&e);
		cmd_hw_info(&e);
	} else if (!strcmp(opt.cmd, "s2-parent")) {
		ktap_header(NR_S2_TESTS);
		edu_open(&e);
		cmd_s2_parent(&e);
	} else if (!strcmp(opt.cmd, "viommu")) {
		ktap_header(NR_VIOMMU_TESTS);
		edu_open(&e);
		cmd_viommu(&e);
	} else {
		usage_error("unknown command ", opt.cmd);
	}
	return ktap_exit_code();
}
