/* Guest payload for pkvm-vmm: a command interpreter driven by the VMM over
 * MMIO exits (protocol in vmm_protocol.h). Runs at EL1 with the MMU off,
 * interrupts masked and no stack; it never returns.
 *
 * Layout: exception vectors at offset 0 (VBAR_EL1 needs 2K alignment),
 * entry point _start at VMM_ENTRY_OFFSET.
 *
 * Boot registers (set by the VMM with KVM_SET_ONE_REG):
 *   x0  IPA of data page 0
 *   x1  page size in bytes (host PAGE_SIZE = pKVM protection granule)
 *
 * State lives in x19-x26: SMCCC calls may clobber x0-x17.
 *   x19 data base  x20 page size  x21 &CMD  x22 &RESULT  x23 pattern base
 *   x24 op         x25 first page x26 page count
 */
#include "vmm_protocol.h"

	.section .text.boot, "ax"

/* Any exception is fatal: report which vector, ESR_EL1, ELR_EL1 and
 * FAR_EL1 as four MMIO stores to VMM_MMIO_EXC, so the VMM can say what
 * went wrong instead of timing out on a guest looping through vectors. */
	.macro	vector	off
	.balign	0x80
	mov	x9, #\off
	b	exception
	.endm

vectors:
	.irp	off, 0x000, 0x080, 0x100, 0x180, 0x200, 0x280, 0x300, 0x380
	vector	\off
	.endr
	.irp	off, 0x400, 0x480, 0x500, 0x580, 0x600, 0x680, 0x700, 0x780
	vector	\off
	.endr

	.balign	VMM_ENTRY_OFFSET
	.global _start
_start:
	adr	x9, vectors
	msr	vbar_el1, x9
	isb
	mov	x19, x0
	mov	x20, x1
	ldr	x21, =VMM_MMIO_CMD
	ldr	x22, =VMM_MMIO_RESULT
	ldr	x23, =VMM_PATTERN

next_cmd:
	/* Plain 64-bit load/store without writeback: the data abort then has
	 * a valid syndrome (ISV=1), which KVM needs to emulate it as MMIO. */
	ldr	x9, [x21]
	and	x24, x9, #0xff
	ubfx	x25, x9, #8, #24
	ubfx	x26, x9, #32, #24

	cmp	x24, #OP_FILL
	b.eq	op_fill
	cmp	x24, #OP_VERIFY
	b.eq	op_verify
	cmp	x24, #OP_READ
	b.eq	op_read
	cmp	x24, #OP_FEATURES
	b.eq	op_features
	cmp	x24, #OP_MEMINFO
	b.eq	op_meminfo
	cmp	x24, #OP_SHARE
	b.eq	op_share
	cmp	x24, #OP_UNSHARE
	b.eq	op_unshare
	cmp	x24, #OP_LOAD32
	b.eq	op_load32
	cmp	x24, #OP_STORE32
	b.eq	op_store32
	ldr	x0, =RESULT_BAD_OP

report:
	str	x0, [x22]
	b	next_cmd

/* Write PATTERN|page to every 64-bit word of pages [first, first+count). */
op_fill:
	mov	x10, x25
	add	x11, x25, x26
1:	cmp	x10, x11
	b.hs	3f
	madd	x12, x10, x20, x19	/* page start */
	add	x13, x12, x20		/* page end */
	orr	x14, x23, x10		/* this page's pattern */
2:	str	x14, [x12], #8
	cmp	x12, x13
	b.lo	2b
	add	x10, x10, #1
	b	1b
3:	mov	x0, x26
	b	report

/* Count words of pages [first, first+count) that differ from the pattern. */
op_verify:
	mov	x0, #0
	mov	x10, x25
	add	x11, x25, x26
1:	cmp	x10, x11
	b.hs	report
	madd	x12, x10, x20, x19
	add	x13, x12, x20
	orr	x14, x23, x10
2:	ldr	x15, [x12], #8
	cmp	x15, x14
	cinc	x0, x0, ne
	cmp	x12, x13
	b.lo	2b
	add	x10, x10, #1
	b	1b

/* Report the first word of page `first` (shows host writes to the guest). */
op_read:
	madd	x12, x25, x20, x19
	ldr	x0, [x12]
	b	report

/* 32-bit load/store at an IPA fetched from VMM_MMIO_ARG (then the value).
 * Plain register-offset-free forms, so that an MMIO exit has ISV=1. */
op_load32:
	ldr	x13, =VMM_MMIO_ARG
	ldr	x12, [x13]
	ldr	w0, [x12]
	b	report

op_store32:
	ldr	x13, =VMM_MMIO_ARG
	ldr	x12, [x13]
	ldr	x10, [x13]
	str	w10, [x12]
	dsb	sy
	mov	x0, xzr
	b	report

op_features:
	ldr	x0, =SMCCC_VENDOR_HYP_KVM_FEATURES
	mov	x1, xzr
	b	smccc

op_meminfo:
	ldr	x0, =SMCCC_KVM_HYP_MEMINFO
	mov	x1, xzr
	b	smccc

op_share:
	ldr	x0, =SMCCC_KVM_MEM_SHARE
	madd	x1, x25, x20, x19	/* IPA of page `first` */
	b	smccc

op_unshare:
	ldr	x0, =SMCCC_KVM_MEM_UNSHARE
	madd	x1, x25, x20, x19

/* SMCCC 1.1 call via HVC: x0 function ID, x1 argument, x2/x3 must be zero.
 * The result (x0) is reported as is. */
smccc:
	mov	x2, xzr
	mov	x3, xzr
	hvc	#0
	b	report

exception:
	ldr	x13, =VMM_MMIO_EXC
	str	x9, [x13]
	mrs	x10, esr_el1
	str	x10, [x13]
	mrs	x10, elr_el1
	str	x10, [x13]
	mrs	x10, far_el1
	str	x10, [x13]
	b	exception		/* keep reporting if run again */

	.ltorg
