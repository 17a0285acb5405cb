/* Command protocol shared by the VMM (pkvm_vmm.c) and its guest payload
 * (payload.S). Only #defines: this file is also preprocessed as assembly.
 *
 * The guest never decides anything on its own. It loops forever:
 *   1. load  64 bits from VMM_MMIO_CMD    -> KVM_EXIT_MMIO (read); the VMM
 *      answers with a command word in run->mmio.data;
 *   2. execute the command;
 *   3. store 64 bits to VMM_MMIO_RESULT   -> KVM_EXIT_MMIO (write); the data
 *      is the command's result (its "progress code").
 * Both addresses are unbacked IPAs (no memslot), so every access exits to
 * the VMM. They sit in different 4K pages so that they are told apart even
 * if the hypervisor withheld the low FAR bits of the fault address.
 *
 * Command word:  bits [7:0] op, [31:8] first page, [55:32] page count.
 * Pages are numbered from the guest data area, whose IPA and page size the
 * VMM passes in x0 / x1 at boot (page size = host PAGE_SIZE, which is also
 * the pKVM memory-protection granule).
 */
#ifndef PKVM_VMM_PROTOCOL_H
#define PKVM_VMM_PROTOCOL_H

#define VMM_MMIO_CMD		0x10000000	/* guest load: next command */
#define VMM_MMIO_RESULT		0x10001000	/* guest store: command result */
/* guest stores on an exception: vector offset, ESR_EL1, ELR_EL1, FAR_EL1 */
#define VMM_MMIO_EXC		0x10002000
/* guest load: the next argument of a LOAD32/STORE32 command */
#define VMM_MMIO_ARG		0x10003000

/* Guest RAM memslot base IPA; payload.lds links the payload here too. */
#define VMM_RAM_IPA		0x80000000
/* Entry point offset in the payload (after the 2K vector table). */
#define VMM_ENTRY_OFFSET	0x800

/* Value the guest writes to every 64-bit word of data page p: PATTERN | p */
#define VMM_PATTERN		0x5ec2e7000000

/* Ops. Results in parentheses. */
#define OP_FILL		1	/* write pattern to pages (count) */
#define OP_VERIFY	2	/* compare pages with pattern (mismatching words) */
#define OP_READ		3	/* (first 64-bit word of page `first`) */
#define OP_FEATURES	4	/* hvc VENDOR_HYP_KVM_FEATURES (x0 bitmap) */
#define OP_MEMINFO	5	/* hvc KVM_FUNC_HYP_MEMINFO (x0: granule or error) */
#define OP_SHARE	6	/* hvc KVM_FUNC_MEM_SHARE on page `first` (x0) */
#define OP_UNSHARE	7	/* hvc KVM_FUNC_MEM_UNSHARE on page `first` (x0) */
/* 32-bit accesses at any IPA (e.g. a device memslot: edu takes only 32-bit
 * accesses below 0x80). The IPA, then for STORE32 the value, are fetched
 * as 64-bit loads from VMM_MMIO_ARG. */
#define OP_LOAD32	8	/* (zero-extended 32-bit value at IPA) */
#define OP_STORE32	9	/* store the value's low 32 bits at IPA (0) */

#define RESULT_BAD_OP	0xbadc0de0badc0de	/* unknown op */

/* SMCCC function IDs (include/linux/arm-smccc.h, hypercalls.rst) */
#define SMCCC_VENDOR_HYP_KVM_FEATURES	0x86000000	/* fast, SMC32, owner 6, fn 0 */
#define SMCCC_KVM_HYP_MEMINFO		0xc6000002	/* fast, SMC64, owner 6, fn 2 */
#define SMCCC_KVM_MEM_SHARE		0xc6000003
#define SMCCC_KVM_MEM_UNSHARE		0xc6000004

#endif
