/* The uapi that iommufd-nest needs beyond common/vfio_uapi.h (VFIO cdev and
 * IOAS calls) and that the cross toolchain's libc headers lack (they have no
 * <linux/iommufd.h>): HW info, HWPT, vIOMMU and vDEVICE. Copied from Linux
 * 7.3 include/uapi/linux/iommufd.h, trimmed to what is used here; guarded so
 * a newer libc header wins.
 *
 * Also the SMMUv3 register, STE, CD and command fields that a VMM writes, from
 * the SMMUv3 architecture (the values match 7.3's arm-smmu-v3.h).
 */
#ifndef IOMMUFD_NEST_UAPI_H
#define IOMMUFD_NEST_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#include "vfio_uapi.h"

/* ---- iommufd.h, beyond the IOAS ---- */
#ifndef IOMMU_HWPT_ALLOC
#define IOMMU_HWPT_ALLOC_NEST_PARENT (1 << 0)
#define IOMMU_HWPT_DATA_NONE 0
#define IOMMU_HWPT_DATA_ARM_SMMUV3 2

struct iommu_hwpt_arm_smmuv3 {
	__aligned_le64 ste[2];
};

struct iommu_hwpt_alloc {
	__u32 size;
	__u32 flags;
	__u32 dev_id;
	__u32 pt_id;
	__u32 out_hwpt_id;
	__u32 __reserved;
	__u32 data_type;
	__u32 data_len;
	__aligned_u64 data_uptr;
	__u32 fault_id;
	__u32 __reserved2;
};
#define IOMMU_HWPT_ALLOC _IO(IOMMUFD_TYPE, 0x89)

#define IOMMU_HW_INFO_TYPE_ARM_SMMUV3 2

struct iommu_hw_info_arm_smmuv3 {
	__u32 flags;
	__u32 __reserved;
	__u32 idr[6];
	__u32 iidr;
	__u32 aidr;
};

struct iommu_hw_info {
	__u32 size;
	__u32 flags;
	__u32 dev_id;
	__u32 data_len;
	__aligned_u64 data_uptr;
	__u32 out_data_type;
	__u8 out_max_pasid_log2;
	__u8 __reserved[3];
	__aligned_u64 out_capabilities;
};
#define IOMMU_GET_HW_INFO _IO(IOMMUFD_TYPE, 0x8a)

#define IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 1

struct iommu_viommu_arm_smmuv3_invalidate {
	__aligned_le64 cmd[2];
};

struct iommu_hwpt_invalidate {
	__u32 size;
	__u32 hwpt_id;
	__aligned_u64 data_uptr;
	__u32 data_type;
	__u32 entry_len;
	__u32 entry_num;
	__u32 __reserved;
};
#define IOMMU_HWPT_INVALIDATE _IO(IOMMUFD_TYPE, 0x8d)

#define IOMMU_VIOMMU_TYPE_ARM_SMMUV3 1

struct iommu_viommu_alloc {
	__u32 size;
	__u32 flags;
	__u32 type;
	__u32 dev_id;
	__u32 hwpt_id;
	__u32 out_viommu_id;
	__u32 data_len;
	__u32 __reserved;
	__aligned_u64 data_uptr;
};
#define IOMMU_VIOMMU_ALLOC _IO(IOMMUFD_TYPE, 0x90)

struct iommu_vdevice_alloc {
	__u32 size;
	__u32 viommu_id;
	__u32 dev_id;
	__u32 out_vdevice_id;
	__aligned_u64 virt_id;
};
#define IOMMU_VDEVICE_ALLOC _IO(IOMMUFD_TYPE, 0x91)
#endif /* IOMMU_HWPT_ALLOC */

/* ---- SMMUv3 architecture (values as in 7.3 arm-smmu-v3.h) ---- */
#define IDR0_S2P (1u << 0)
#define IDR0_S1P (1u << 1)
#define IDR0_TTF_SHIFT 2 /* 2 bits; 2 = AArch64, 3 = both */
#define IDR0_ASID16 (1u << 12)
#define IDR3_FWB (1u << 8)
#define IDR3_RIL (1u << 10)
#define IDR5_OAS_MASK 0x7u

#define STE0_V (1ull << 0)
#define STE0_CFG_SHIFT 1
#define STE0_CFG_S1_TRANS 5ull
#define STE0_S1CTXPTR_MASK 0x000fffffffffffc0ull /* [51:6] */
#define STE1_S1CIR_SHIFT 2
#define STE1_S1COR_SHIFT 4
#define STE1_S1CSH_SHIFT 6
#define STE1_CACHE_WBRA 1ull
#define SH_ISH 3ull

#define CD0_T0SZ_SHIFT 0
#define CD0_TG0_SHIFT 6 /* 0 = 4 KiB */
#define CD0_IRGN0_SHIFT 8
#define CD0_ORGN0_SHIFT 10
#define CD0_SH0_SHIFT 12
#define CD0_EPD1 (1ull << 30)
#define CD0_V (1ull << 31)
#define CD0_IPS_SHIFT 32
#define CD0_AA64 (1ull << 41)
#define CD0_R (1ull << 45)
#define CD0_A (1ull << 46)
#define CD0_ASET (1ull << 47)
#define CD0_ASID_SHIFT 48
#define CD1_TTB0_MASK 0x000ffffffffffff0ull /* [51:4] */

/* VMSAv8-64 stage-1 descriptors, 4 KiB granule */
#define PTE_VALID_TABLE 3ull /* table (levels 0-2) or page (level 3) */
#define PTE_AP_UNPRIV (1ull << 6) /* PCIe requests are unprivileged */
#define PTE_SH_ISH (3ull << 8)
#define PTE_AF (1ull << 10)
#define PTE_NG (1ull << 11)
#define PTE_ADDR_MASK 0x0000fffffffff000ull

#define CMDQ_OP_TLBI_NH_VA 0x12ull
#define CMDQ_TLBI_0_ASID_SHIFT 48
#define CMDQ_TLBI_1_LEAF 1ull

#endif /* IOMMUFD_NEST_UAPI_H */
