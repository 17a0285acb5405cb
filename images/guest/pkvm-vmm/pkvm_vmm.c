/* pkvm-vmm: a minimal static KVM VMM for arm64 that exercises pKVM
 * protected VMs (pVMs) from userspace and reports in KTAP v1.
 *
 * The guest is payload.S, a command interpreter driven over MMIO exits
 * (protocol: vmm_protocol.h, README.md). Subcommands: probe, lifecycle,
 * normal-vm, pvm-donate, pvm-teardown, pvm-rules, pvm-dma-isolation (which
 * also drives QEMU's edu PCI device through sysfs) and pfnmap (memslots over
 * VM_PFNMAP memory: the edu's BAR0 through vfio-pci, and a cacheable region
 * from a test-only driver).
 *
 * Exit status: 0 all ok/skip, 1 some test not ok, 2 bail out (bad
 * environment: no /dev/kvm, a setup ioctl failing unexpectedly, no edu
 * device or its DMA timing out, bad usage).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/capability.h>
#include <linux/kvm.h>
#include <linux/vfio.h>
#include <linux/pci_regs.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "edu.h"
#include "ktap.h"
#include "pci.h"
#include "vfio.h"
#include "vmm_protocol.h"

#ifndef PAYLOAD_BIN
#error "PAYLOAD_BIN must be the path of the linked guest payload (see ../Makefile)"
#endif

/* The cross toolchain ships Linux 6.1 uapi headers; this machine type bit is
 * newer (include/uapi/linux/kvm.h of the 7.3 reference tree). There is no
 * KVM_CAP for pVMs there, so support is probed by creating one. */
#ifndef KVM_VM_TYPE_ARM_PROTECTED
#define KVM_VM_TYPE_ARM_PROTECTED (1UL << 31)
#endif

/* Embed the guest payload (built by the Makefile from payload.S). The
 * labels must be real (global, hidden) symbols: as local labels, gcc's
 * GOT-relative references to them collapse into one section-relative GOT
 * slot and payload_end - payload_start silently becomes 0. */
__asm__(".pushsection .rodata\n"
	".balign 16\n"
	".global payload_start, payload_end\n"
	".hidden payload_start, payload_end\n"
	"payload_start:\n"
	".incbin \"" PAYLOAD_BIN "\"\n"
	"payload_end:\n"
	".popsection\n");
extern const unsigned char payload_start[] __attribute__((visibility("hidden")));
extern const unsigned char payload_end[] __attribute__((visibility("hidden")));

#define MAX_VCPUS		8
#define LIFECYCLE_PAGES		4	/* data pages per vCPU */
/* A stuck guest must not hang the harness: KVM_RUN is interrupted by
 * SIGALRM after this long (generous: nested virt under TCG is slow).
 * PKVM_VMM_RUN_TIMEOUT=<seconds> overrides it. */
#define RUN_TIMEOUT_S		120
/* How long pvm-teardown waits for MemFree to recover after teardown. */
#define MEMFREE_SETTLE_MS	15000
/* KVM_{GET,SET}_ONE_REG id of a 64-bit field of struct kvm_regs. */
#define CORE_REG(r) (KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | \
		     KVM_REG_ARM_CORE_REG(r))
/* What the host writes into a shared page for the guest to read back. */
#define HOST_VALUE		0x4057c0de00000000ULL

struct vcpu {
	int fd;
	struct kvm_run *run;
};

struct vm {
	int fd;
	bool protected;
	uint8_t *mem;		/* host mapping: code page, then data pages */
	size_t mem_size;
	unsigned int data_pages;
	int nr_vcpus;
	struct vcpu vcpu[MAX_VCPUS];
};

static int kvm_fd = -1;
static int kvm_api;
static long page_size;
static int vcpu_mmap_size;
static size_t payload_size;
static char err_buf[256];	/* why the last helper failed */
static volatile sig_atomic_t alarm_fired;
static unsigned int run_timeout_s = RUN_TIMEOUT_S;
/* Guest RAM IPA; PKVM_VMM_RAM_IPA overrides it for debugging (the payload
 * is position-independent, only its disassembly assumes VMM_RAM_IPA). */
static uint64_t ram_ipa = VMM_RAM_IPA;

/* ---------------------------------------------------------------- util */

static const char *errname(int e)
{
	const char *n = strerrorname_np(e);

	return n ? n : "E?";
}

static const char *signame(int sig)
{
	switch (sig) {
	case 0: return "none";
	case SIGSEGV: return "SIGSEGV";
	case SIGBUS: return "SIGBUS";
	default: return "other";
	}
}

/* Record why something failed; returns -e so callers can `return set_err()`. */
static int __attribute__((format(printf, 2, 3))) set_err(int e, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err_buf, sizeof(err_buf), fmt, ap);
	va_end(ap);
	return -e;
}

/* Format a test's failure reason; returns false for `return fail(...)`. */
static bool __attribute__((format(printf, 3, 4))) fail(char *why, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, len, fmt, ap);
	va_end(ap);
	return false;
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static uint64_t pattern(unsigned int page)
{
	return VMM_PATTERN | page;
}

/* A "Key:   N kB" field of a /proc file (meminfo, self/status), or -1. */
static long proc_kb(const char *path, const char *key)
{
	FILE *f = fopen(path, "r");
	size_t klen = strlen(key);
	char line[128];
	long kb = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, klen) && line[klen] == ':' &&
		    sscanf(line + klen + 1, "%ld", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

static long memfree_kb(void)
{
	return proc_kb("/proc/meminfo", "MemFree");
}

/* Pages donated to a pVM are charged to the VMM's locked_vm (VmLck). */
static long vmlck_kb(void)
{
	return proc_kb("/proc/self/status", "VmLck");
}

/* Physical addresses of npages host pages from /proc/self/pagemap; 0 where
 * the page is not present or the PFN is hidden (needs CAP_SYS_ADMIN). */
static void pagemap_pa(const void *addr, size_t npages, uint64_t *pa)
{
	off_t off = (uintptr_t)addr / page_size * sizeof(uint64_t);
	size_t len = npages * sizeof(uint64_t);
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	memset(pa, 0, len);
	if (fd < 0)
		return;
	if (pread(fd, pa, len, off) != (ssize_t)len)
		memset(pa, 0, len);
	close(fd);
	for (size_t i = 0; i < npages; i++) {
		bool present = pa[i] >> 63;
		uint64_t pfn = pa[i] & ((1ULL << 55) - 1);

		pa[i] = present ? pfn * page_size : 0;
	}
}

/* ------------------------------------------------- fault-tolerant access */

/* A host access to memory donated to a pVM raises SIGSEGV (pkvm.rst). The
 * handler jumps back into host_access(), which reports the signal. */
static sigjmp_buf probe_env;
static volatile sig_atomic_t probe_armed, probe_signal;

static void fault_handler(int sig)
{
	if (!probe_armed) {
		/* A genuine crash: die with the original signal. */
		signal(sig, SIG_DFL);
		raise(sig);
		return;
	}
	probe_armed = 0;
	probe_signal = sig;
	siglongjmp(probe_env, 1);
}

/* Read (write == false) or write *val at addr; returns 0 or the signal. */
static int host_access(void *addr, uint64_t *val, bool write)
{
	probe_signal = 0;
	if (sigsetjmp(probe_env, 1))
		return probe_signal;
	probe_armed = 1;
	if (write)
		*(volatile uint64_t *)addr = *val;
	else
		*val = *(volatile uint64_t *)addr;
	probe_armed = 0;
	return 0;
}

static void alarm_handler(int sig)
{
	(void)sig;
	alarm_fired = 1;
}

static void install_handlers(void)
{
	struct sigaction sa = { .sa_handler = fault_handler };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	/* No SA_RESTART: the alarm must interrupt a blocked KVM_RUN. */
	sa.sa_handler = alarm_handler;
	sigaction(SIGALRM, &sa, NULL);
}

/* ------------------------------------------------------------- KVM: VM */

static void kvm_open(void)
{
	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0)
		ktap_bail("open /dev/kvm: %s", strerror(errno));
	kvm_api = ioctl(kvm_fd, KVM_GET_API_VERSION, 0);
	if (kvm_api < 0)
		ktap_bail("KVM_GET_API_VERSION: %s", strerror(errno));
	vcpu_mmap_size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (vcpu_mmap_size < (int)sizeof(struct kvm_run))
		ktap_bail("KVM_GET_VCPU_MMAP_SIZE: %s", strerror(errno));
	page_size = sysconf(_SC_PAGESIZE);
	payload_size = payload_end - payload_start;
	if (payload_size <= VMM_ENTRY_OFFSET || payload_size > (size_t)page_size)
		ktap_bail("payload size %zu bytes: not in (%d, %ld]", payload_size,
		     VMM_ENTRY_OFFSET, page_size);
}

/* The errno of the last refused KVM_CREATE_VM(protected): the probe
 * reports it, so that a kernel expected to offer pVMs is failed with the
 * kernel's own answer rather than skipped. */
static int protected_errno;

/* 1 if pVMs can be created, 0 if not (EINVAL: 6.12, or not protected mode),
 * or -errno for anything unexpected. */
static int probe_protected(void)
{
	int fd = ioctl(kvm_fd, KVM_CREATE_VM, KVM_VM_TYPE_ARM_PROTECTED);

	if (fd >= 0) {
		close(fd);
		return 1;
	}
	protected_errno = errno;
	return errno == EINVAL ? 0 : -errno;
}

static uint8_t *data_page(struct vm *vm, unsigned int page)
{
	return vm->mem + (size_t)(page + 1) * page_size;
}

static int set_memslot(struct vm *vm, uint32_t flags, uint64_t gpa, uint64_t size)
{
	struct kvm_userspace_memory_region r = {
		.slot = 0,
		.flags = flags,
		.guest_phys_addr = gpa,
		.memory_size = size,
		.userspace_addr = (uintptr_t)vm->mem,
	};

	if (ioctl(vm->fd, KVM_SET_USER_MEMORY_REGION, &r))
		return set_err(errno, "KVM_SET_USER_MEMORY_REGION: %s", strerror(errno));
	return 0;
}

/* VM fd plus guest RAM (one code page holding the payload, then data
 * pages); no memslot yet so that callers can choose its flags. */
static int vm_create(struct vm *vm, bool protected, unsigned int data_pages)
{
	memset(vm, 0, sizeof(*vm));
	vm->protected = protected;
	vm->data_pages = data_pages;
	vm->fd = ioctl(kvm_fd, KVM_CREATE_VM, protected ? KVM_VM_TYPE_ARM_PROTECTED : 0);
	if (vm->fd < 0)
		return set_err(errno, "KVM_CREATE_VM(%s): %s",
			       protected ? "protected" : "normal", strerror(errno));

	/* Anonymous private memory: pKVM only donates swap-backed pages. */
	vm->mem_size = (size_t)(data_pages + 1) * page_size;
	vm->mem = mmap(NULL, vm->mem_size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (vm->mem == MAP_FAILED) {
		vm->mem = NULL;
		return set_err(errno, "mmap guest memory: %s", strerror(errno));
	}
	/* Page-sized host pages keep pagemap and SIGSEGV checks per page. */
	madvise(vm->mem, vm->mem_size, MADV_NOHUGEPAGE);
	memcpy(vm->mem, payload_start, payload_size);
	return 0;
}

static uint64_t get_reg(struct vcpu *v, uint64_t id)
{
	uint64_t val = ~0ULL;
	struct kvm_one_reg reg = { .id = id, .addr = (uintptr_t)&val };

	ioctl(v->fd, KVM_GET_ONE_REG, &reg);
	return val;
}

static int set_core_reg(struct vcpu *v, uint64_t id, uint64_t val)
{
	struct kvm_one_reg reg = { .id = id, .addr = (uintptr_t)&val };

	if (ioctl(v->fd, KVM_SET_ONE_REG, &reg))
		return set_err(errno, "KVM_SET_ONE_REG: %s", strerror(errno));
	return 0;
}

/* All vCPUs must exist before the first KVM_RUN of a pVM: that run sizes
 * and creates the hypervisor's VM structure. Every vCPU starts at the
 * payload entry point with the boot registers of payload.S. */
static int vm_add_vcpu(struct vm *vm)
{
	struct vcpu *v = &vm->vcpu[vm->nr_vcpus];
	struct kvm_vcpu_init init;
	int rc;

	if (vm->nr_vcpus >= MAX_VCPUS)
		return set_err(EINVAL, "too many vCPUs");
	v->fd = ioctl(vm->fd, KVM_CREATE_VCPU, vm->nr_vcpus);
	if (v->fd < 0)
		return set_err(errno, "KVM_CREATE_VCPU: %s", strerror(errno));
	vm->nr_vcpus++;
	v->run = mmap(NULL, vcpu_mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
	if (v->run == MAP_FAILED) {
		v->run = NULL;
		return set_err(errno, "mmap kvm_run: %s", strerror(errno));
	}
	memset(&init, 0, sizeof(init));
	if (ioctl(vm->fd, KVM_ARM_PREFERRED_TARGET, &init))
		return set_err(errno, "KVM_ARM_PREFERRED_TARGET: %s", strerror(errno));
	if (ioctl(v->fd, KVM_ARM_VCPU_INIT, &init))
		return set_err(errno, "KVM_ARM_VCPU_INIT: %s", strerror(errno));

	rc = set_core_reg(v, CORE_REG(regs.pc), ram_ipa + VMM_ENTRY_OFFSET);
	if (!rc)
		rc = set_core_reg(v, CORE_REG(regs.regs[0]), ram_ipa + page_size);
	if (!rc)
		rc = set_core_reg(v, CORE_REG(regs.regs[1]), page_size);
	if (getenv("PKVM_VMM_DEBUG"))
		fprintf(stderr, "vcpu %d: pc=0x%" PRIx64 " x0=0x%" PRIx64 " pstate=0x%" PRIx64 "\n",
			vm->nr_vcpus - 1, get_reg(v, CORE_REG(regs.pc)),
			get_reg(v, CORE_REG(regs.regs[0])), get_reg(v, CORE_REG(regs.pstate)));
	return rc;
}

static int vm_setup(struct vm *vm, bool protected, unsigned int data_pages, int nr_vcpus)
{
	int rc = vm_create(vm, protected, data_pages);

	if (!rc)
		rc = set_memslot(vm, 0, ram_ipa, vm->mem_size);
	for (int i = 0; !rc && i < nr_vcpus; i++)
		rc = vm_add_vcpu(vm);
	return rc;
}

/* Close every fd (for a pVM this tears it down: the hypervisor reclaims
 * and zeroes its pages, KVM unpins them). The guest RAM mapping is kept
 * when keep_mem, so that the teardown test can inspect it. */
static void vm_destroy(struct vm *vm, bool keep_mem)
{
	for (int i = 0; i < vm->nr_vcpus; i++) {
		if (vm->vcpu[i].run)
			munmap(vm->vcpu[i].run, vcpu_mmap_size);
		close(vm->vcpu[i].fd);
	}
	vm->nr_vcpus = 0;
	if (vm->fd >= 0)
		close(vm->fd);
	vm->fd = -1;
	if (vm->mem && !keep_mem) {
		munmap(vm->mem, vm->mem_size);
		vm->mem = NULL;
	}
}

/* ----------------------------------------------------------- KVM: vCPU */

/* Where a guest that does not exit is stuck (PC, and its EL1 exception
 * state in case it took an exception with no vectors installed). */
static int stuck_err(struct vcpu *v)
{
	return set_err(ETIMEDOUT, "KVM_RUN: guest still running after %us "
		       "(pc=0x%" PRIx64 " pstate=0x%" PRIx64 " esr_el1=0x%" PRIx64
		       " far_el1=0x%" PRIx64 " elr_el1=0x%" PRIx64 ")", run_timeout_s,
		       get_reg(v, CORE_REG(regs.pc)), get_reg(v, CORE_REG(regs.pstate)),
		       get_reg(v, ARM64_SYS_REG(3, 0, 5, 2, 0)),
		       get_reg(v, ARM64_SYS_REG(3, 0, 6, 0, 0)),
		       get_reg(v, CORE_REG(elr_el1)));
}

static int vcpu_run(struct vcpu *v)
{
	int rc;

	alarm_fired = 0;
	alarm(run_timeout_s);
	do {
		rc = ioctl(v->fd, KVM_RUN, 0);
	} while (rc && errno == EINTR && !alarm_fired);
	alarm(0);
	if (rc && alarm_fired)
		return stuck_err(v);
	if (rc)
		return set_err(errno, "KVM_RUN: %s", strerror(errno));
	if (getenv("PKVM_VMM_DEBUG"))
		fprintf(stderr, "exit reason=%u mmio addr=0x%llx len=%u write=%u data=0x%" PRIx64 "\n",
			v->run->exit_reason, (unsigned long long)v->run->mmio.phys_addr,
			v->run->mmio.len, v->run->mmio.is_write, *(uint64_t *)v->run->mmio.data);
	return 0;
}

static bool is_mmio(const struct kvm_run *run, uint64_t addr, bool write)
{
	return run->exit_reason == KVM_EXIT_MMIO && run->mmio.phys_addr == addr &&
	       run->mmio.len == 8 && !!run->mmio.is_write == write;
}

/* The guest took an exception: its vector code reports the vector offset,
 * ESR_EL1, ELR_EL1 and FAR_EL1 as four MMIO stores (payload.S). */
static int guest_exception(struct vcpu *v)
{
	const struct kvm_run *run = v->run;
	uint64_t val[4];

	for (int i = 0; i < 4; i++) {
		if (i && (vcpu_run(v) || !is_mmio(run, VMM_MMIO_EXC, true)))
			return set_err(EPROTO, "guest exception, incomplete report");
		memcpy(&val[i], run->mmio.data, sizeof(val[i]));
	}
	return set_err(EPROTO, "guest exception (vector 0x%" PRIx64 "): esr_el1=0x%" PRIx64
		       " elr_el1=0x%" PRIx64 " far_el1=0x%" PRIx64, val[0], val[1], val[2], val[3]);
}

static int unexpected_exit(struct vcpu *v, const char *step)
{
	const struct kvm_run *run = v->run;

	if (is_mmio(run, VMM_MMIO_EXC, true))
		return guest_exception(v);
	if (run->exit_reason == KVM_EXIT_MMIO)
		return set_err(EPROTO, "unexpected MMIO %s at 0x%llx len=%u during %s",
			       run->mmio.is_write ? "write" : "read",
			       (unsigned long long)run->mmio.phys_addr, run->mmio.len, step);
	return set_err(EPROTO, "unexpected exit reason %u during %s", run->exit_reason, step);
}

/* Run one protocol command on vCPU idx: hand the guest the command word
 * at its CMD load, then run until it stores the result. Returns 0, -errno
 * of a failing KVM_RUN, or -EPROTO for an exit the protocol does not
 * expect; err_buf says which. */
static int vcpu_exec(struct vm *vm, int idx, unsigned int op, unsigned int first,
		     unsigned int count, uint64_t *result)
{
	struct vcpu *v = &vm->vcpu[idx];
	uint64_t cmd = op | (uint64_t)first << 8 | (uint64_t)count << 32;
	int rc;

	rc = vcpu_run(v);
	if (rc)
		return rc;
	if (!is_mmio(v->run, VMM_MMIO_CMD, false))
		return unexpected_exit(v, "command fetch");
	memcpy(v->run->mmio.data, &cmd, sizeof(cmd));

	rc = vcpu_run(v);
	if (rc)
		return rc;
	if (!is_mmio(v->run, VMM_MMIO_RESULT, true))
		return unexpected_exit(v, "command");
	memcpy(result, v->run->mmio.data, sizeof(*result));
	return 0;
}

/* Fill pages with the pattern in the guest, and have the guest check them. */
static int guest_fill_verify(struct vm *vm, int idx, unsigned int first, unsigned int count)
{
	uint64_t res;
	int rc;

	rc = vcpu_exec(vm, idx, OP_FILL, first, count, &res);
	if (rc)
		return rc;
	if (res != count)
		return set_err(EPROTO, "guest FILL returned 0x%" PRIx64, res);
	rc = vcpu_exec(vm, idx, OP_VERIFY, first, count, &res);
	if (rc)
		return rc;
	if (res)
		return set_err(EPROTO, "guest VERIFY found %" PRIu64 " bad words", res);
	return 0;
}

/* Words of data pages that do not hold the guest pattern (host view;
 * only for memory the host may read). */
static unsigned long host_mismatches(struct vm *vm, unsigned int first, unsigned int count)
{
	unsigned long bad = 0;

	for (unsigned int p = first; p < first + count; p++) {
		const uint64_t *w = (const uint64_t *)data_page(vm, p);

		for (size_t i = 0; i < page_size / sizeof(*w); i++)
			bad += w[i] != pattern(p);
	}
	return bad;
}

/* ------------------------------------------------------------ commands */

/* If pVMs are unsupported, SKIP every planned test; bail if the probe
 * itself failed in an unexpected way. */
static bool require_protected(const char *const *names, int n)
{
	int prot = probe_protected();

	if (prot < 0)
		ktap_bail("KVM_CREATE_VM(protected): %s", strerror(-prot));
	ktap_diag("protected_vm=%d", prot);
	if (prot)
		return true;
	for (int i = 0; i < n; i++)
		ktap_result(1, 1, names[i], "protected VMs not supported");
	return false;
}

/* Ask a pVM guest which vendor-hyp KVM services it gets. */
static void probe_hypercalls(void)
{
	struct vm vm;
	uint64_t features = 0, granule = 0;
	int rc;

	rc = vm_setup(&vm, true, 1, 1);
	if (!rc)
		rc = vcpu_exec(&vm, 0, OP_FEATURES, 0, 0, &features);
	if (!rc)
		rc = vcpu_exec(&vm, 0, OP_MEMINFO, 0, 0, &granule);
	vm_destroy(&vm, false);
	if (rc) {
		ktap_diag("pkvm_hypercalls=0");
		ktap_diag("pkvm_hypercalls_error=%s", err_buf);
		return;
	}
	/* FEATURES: bitmap of function numbers; pKVM guests need 2, 3, 4. */
	uint64_t want = 1 << 2 | 1 << 3 | 1 << 4;

	ktap_diag("vendor_hyp_features=0x%" PRIx64, features);
	ktap_diag("pkvm_hypercalls=%d", (features & want) == want);
	ktap_diag("hyp_meminfo_granule=%" PRId64, (int64_t)granule);
}

static int cmd_probe(void)
{
	int prot, ipa;

	ktap_header(1);
	ktap_diag("kvm_api=%d", kvm_api);
	ktap_diag("page_size=%ld", page_size);
	ipa = ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_ARM_VM_IPA_SIZE);
	ktap_diag("ipa_size_max=%d", ipa);

	prot = probe_protected();
	if (prot < 0)
		ktap_bail("KVM_CREATE_VM(protected): %s", strerror(-prot));
	ktap_diag("protected_vm=%d", prot);
	if (prot) {
		probe_hypercalls();
	} else {
		const char *name = strerrorname_np(protected_errno);

		ktap_diag("protected_vm_error=%s", name ? name : "unknown errno");
		ktap_diag("pkvm_hypercalls=0");
	}
	ktap_result(kvm_api == 12, 0, "probe", "KVM_GET_API_VERSION is not 12");
	return ktap_exit_code();
}

/* ------------------------------------------------- lifecycle accounting */

/* Every page KVM holds for a VM's stage 2 is counted, exactly, in the
 * node's NR_SECONDARY_PAGETABLE (kvm_account_pgtable_pages): under pKVM the
 * PGD, each vCPU's hyp memcache (HYP_MEMCACHE_ACCOUNT_STAGE2) and what the
 * hypervisor hands back at teardown in stage2_teardown_mc, uncounted as
 * they are freed. The IOMMU's page tables are counted there too, and also
 * in NR_IOMMU_PAGES: the difference is KVM's alone, and it is back to its
 * value before a VM's life when the teardown returned everything. The
 * counters are per-CPU deltas folded into the global figure by vmstat's
 * periodic work (about once a second; this kernel may offer no
 * /proc/sys/vm/stat_refresh), so a figure is only read once it held still
 * for longer than that. */
#define ACCT_STILL_MS		1500	/* > vmstat's fold interval: 1 s, at whole seconds */
#define ACCT_POLL_MS		100
#define ACCT_MAX_MS		15000	/* the figure never held still: bail out */

struct acct {
	long kvm_pt;		/* nr_sec_page_table_pages - nr_iommu_pages */
	long free;		/* nr_free_pages + pages on the per-CPU lists */
};

/* A "name value" line of /proc/vmstat, or -1. */
static long vmstat_pages(const char *text, const char *name)
{
	size_t len = strlen(name);

	for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (!strncmp(p, name, len) && p[len] == ' ')
			return strtol(p + len + 1, NULL, 10);
	return -1;
}

static ssize_t read_text(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n, got = 0;

	if (fd < 0)
		return -1;
	while (got < (ssize_t)len - 1 && (n = read(fd, buf + got, len - 1 - got)) > 0)
		got += n;
	close(fd);
	buf[got] = 0;
	return got;
}

/* Pages sitting on the per-CPU free lists ("count:" of each pageset in
 * /proc/zoneinfo): free, but not in nr_free_pages. */
static long pcp_pages(void)
{
	static char text[64 * 1024];
	long sum = 0;

	if (read_text("/proc/zoneinfo", text, sizeof(text)) <= 0)
		return 0;
	for (const char *p = strstr(text, "count:"); p; p = strstr(p + 6, "count:"))
		sum += strtol(p + 6, NULL, 10);
	return sum;
}

/* 0, or -1 with err_buf set when /proc/vmstat lacks the counters. */
static int acct_read(struct acct *a)
{
	static char text[16 * 1024];
	long sec, iommu;

	if (read_text("/proc/vmstat", text, sizeof(text)) <= 0)
		return set_err(ENOENT, "/proc/vmstat: %s", strerror(errno));
	sec = vmstat_pages(text, "nr_sec_page_table_pages");
	if (sec < 0)
		return set_err(ENOENT, "/proc/vmstat has no nr_sec_page_table_pages");
	iommu = vmstat_pages(text, "nr_iommu_pages");	/* Linux >= 6.11 */
	a->kvm_pt = sec - (iommu > 0 ? iommu : 0);
	a->free = vmstat_pages(text, "nr_free_pages") + pcp_pages();
	return 0;
}

/* The figures once KVM's has held still for ACCT_STILL_MS; *waited_ms says
 * how long that took. */
static int acct_settle(struct acct *a, double *waited_ms)
{
	double start = now_ms(), since = start;
	struct acct cur;

	if (acct_read(a))
		return -1;
	for (;;) {
		double t = now_ms();

		if (t - since >= ACCT_STILL_MS)
			break;
		if (t - start >= ACCT_MAX_MS)
			return set_err(ETIMEDOUT, "KVM's page-table count did not hold still for %d ms"
				       " within %d ms", ACCT_STILL_MS, ACCT_MAX_MS);
		usleep(ACCT_POLL_MS * 1000);
		if (acct_read(&cur))
			return -1;
		if (cur.kvm_pt != a->kvm_pt)
			since = now_ms();
		*a = cur;
	}
	*waited_ms = now_ms() - start;
	return 0;
}

/* One create/run/check/destroy cycle; 0 or -errno with err_buf set. With
 * live, the figures while the VM exists (its vCPUs have run), unsettled. */
static int lifecycle_cycle(bool protected, int nr_vcpus, struct acct *live)
{
	struct vm vm;
	int rc;

	rc = vm_setup(&vm, protected, nr_vcpus * LIFECYCLE_PAGES, nr_vcpus);
	for (int i = 0; !rc && i < nr_vcpus; i++) {
		unsigned int first = i * LIFECYCLE_PAGES;
		unsigned long bad;

		rc = guest_fill_verify(&vm, i, first, LIFECYCLE_PAGES);
		/* A normal VM's memory is the host's: the pattern must show. */
		if (!rc && !protected && (bad = host_mismatches(&vm, first, LIFECYCLE_PAGES)))
			rc = set_err(EPROTO, "vcpu %d: host sees %lu words without the pattern",
				     i, bad);
	}
	if (!rc && live)
		rc = acct_read(live);
	vm_destroy(&vm, false);
	return rc;
}

/* One batch of life cycles: N VMs of K vCPUs, one after another. */
struct batch {
	int cycles;
	int vcpus;
};

#define MAX_BATCHES	4

/* Each batch's life cycles, one test each; with leak_check, one more test
 * after them all: KVM's page-table pages (stage-2 PGD and tables, the hyp
 * memcaches) are all back, exactly. The first VM is also read alive, which
 * proves that this kernel counts them at all (a count that never moves
 * would pass any leak): a kernel that does not SKIPs the check and says
 * why. */
static int cmd_lifecycle(const struct batch *batches, int nr_batches, bool protected,
			 bool leak_check)
{
	char names[MAX_BATCHES + 1][96], why[320];
	const char *plan[MAX_BATCHES + 1];
	struct acct before, live = { 0 }, after;
	int vms = 0, rc = 0;
	double waited;
	long kept;

	for (int b = 0; b < nr_batches; b++) {
		snprintf(names[b], sizeof(names[b]), "lifecycle%s vcpus=%d cycles=%d",
			 protected ? " protected" : "", batches[b].vcpus, batches[b].cycles);
		plan[b] = names[b];
	}
	snprintf(names[nr_batches], sizeof(names[0]), "lifecycle%s returns KVM's page-table pages",
		 protected ? " protected" : "");
	plan[nr_batches] = names[nr_batches];
	ktap_header(nr_batches + leak_check);
	if (protected && !require_protected(plan, nr_batches + leak_check))
		return ktap_exit_code();
	if (leak_check && acct_settle(&before, &waited))
		ktap_bail("%s", err_buf);
	if (leak_check)
		ktap_diag("kvm_pt_pages_before=%ld (settled in %.0f ms)", before.kvm_pt, waited);

	for (int b = 0; b < nr_batches && !rc; b++) {
		const struct batch *bt = &batches[b];
		double total = 0, worst = 0;
		int c;

		for (c = 0; c < bt->cycles && !rc; c++) {
			double t0 = now_ms(), dt;

			rc = lifecycle_cycle(protected, bt->vcpus, leak_check && !vms ? &live : NULL);
			dt = now_ms() - t0;
			total += dt;
			if (dt > worst)
				worst = dt;
			vms += !rc;
		}
		ktap_diag("vcpus=%d cycles_done=%d", bt->vcpus, rc ? c - 1 : c);
		if (c)
			ktap_diag("metric: cycle_ms_vcpus%d=%.3f ms", bt->vcpus, total / c);
		ktap_diag("cycle_ms_max=%.3f", worst);
		snprintf(why, sizeof(why), "cycle %d: %s", c - 1, err_buf);
		ktap_result(!rc, 0, names[b], why);
	}
	if (!leak_check)
		return ktap_exit_code();
	if (rc) {
		ktap_result(0, 1, names[nr_batches], "the life cycles failed");
		return ktap_exit_code();
	}
	/* The live figure is read unsettled: per-CPU deltas fold once they
	 * pass a threshold, so a VM's tables usually show at once. Only when
	 * they do not is it worth waiting for vmstat to fold them. */
	if (live.kvm_pt <= before.kvm_pt) {
		struct vm vm;

		rc = vm_setup(&vm, protected, batches[0].vcpus * LIFECYCLE_PAGES, batches[0].vcpus);
		for (int i = 0; !rc && i < batches[0].vcpus; i++)
			rc = guest_fill_verify(&vm, i, i * LIFECYCLE_PAGES, LIFECYCLE_PAGES);
		if (!rc)
			rc = acct_settle(&live, &waited);
		vm_destroy(&vm, false);
		if (rc)
			ktap_bail("a VM read alive: %s", err_buf);
	}
	if (acct_settle(&after, &waited))
		ktap_bail("%s", err_buf);
	kept = after.kvm_pt - before.kvm_pt;
	ktap_diag("kvm_pt_pages_alive=%ld", live.kvm_pt);
	ktap_diag("kvm_pt_pages_after=%ld (settled in %.0f ms)", after.kvm_pt, waited);
	ktap_diag("metric: kvm_pt_pages_kept=%ld pages", kept);
	/* Not checked: free pages move with whatever else the guest does.
	 * Shown, so that a leak outside KVM's page tables can be read off. */
	ktap_diag("free_pages_drop=%ld", before.free - after.free);
	if (live.kvm_pt <= before.kvm_pt) {
		snprintf(why, sizeof(why), "this kernel does not count them:"
			 " nr_sec_page_table_pages - nr_iommu_pages was %ld before the"
			 " first VM and %ld with it alive", before.kvm_pt, live.kvm_pt);
		ktap_result(0, 1, names[nr_batches], why);
	} else {
		snprintf(why, sizeof(why), "not all back after %d VMs: %ld pages kept (%.1f per"
			 " VM; %ld before, %ld with the first VM alive, %ld after)",
			 vms, kept, (double)kept / vms, before.kvm_pt, live.kvm_pt, after.kvm_pt);
		ktap_result(!kept, 0, names[nr_batches], why);
	}
	return ktap_exit_code();
}

static int cmd_normal_vm(void)
{
	const unsigned int pages = 8;
	const char *name = "normal-vm host reads guest pattern";
	struct vm vm;
	uint64_t val = HOST_VALUE, back = 0;
	unsigned long bad;
	char why[320];
	int rc;

	ktap_header(1);
	if (vm_setup(&vm, false, pages, 1))
		ktap_bail("%s", err_buf);
	memset(data_page(&vm, 0), 0, pages * page_size);
	ktap_diag("pages=%u", pages);

	rc = guest_fill_verify(&vm, 0, 0, pages);
	if (rc) {
		snprintf(why, sizeof(why), "guest run failed: %s", err_buf);
		ktap_result(0, 0, name, why);
		goto out;
	}
	bad = host_mismatches(&vm, 0, pages);
	ktap_diag("host_mismatches=%lu", bad);
	/* And the other direction: the guest sees what the host wrote. */
	host_access(data_page(&vm, 0), &val, true);
	rc = vcpu_exec(&vm, 0, OP_READ, 0, 0, &back);
	ktap_diag("guest_readback=0x%" PRIx64, back);
	if (bad)
		snprintf(why, sizeof(why), "host sees %lu words without the guest pattern", bad);
	else if (rc)
		snprintf(why, sizeof(why), "guest read-back failed: %s", err_buf);
	else if (back != HOST_VALUE)
		snprintf(why, sizeof(why), "guest read 0x%" PRIx64 " after host wrote 0x%llx",
			 back, HOST_VALUE);
	ktap_result(!bad && !rc && back == HOST_VALUE, 0, name, why);
out:
	vm_destroy(&vm, false);
	return ktap_exit_code();
}

/* pvm-donate ------------------------------------------------------------ */

/* Data pages of the pvm-donate guest, one per check. */
enum { PG_SHARED, PG_READ, PG_WRITE, PG_PROCMEM, DONATE_PAGES };
/* vCPU 0 runs everything except the accesses to reclaimed pages. */
enum { VCPU_MAIN, VCPU_WRITE, VCPU_PROCMEM, DONATE_VCPUS };

static const char *const donate_names[] = {
	"pvm-donate guest writes pattern",
	"pvm-donate host read of donated page faults",
	"pvm-donate shared page accessible to host",
	"pvm-donate unshared page faults again",
	"pvm-donate write(2) from donated page",
	"pvm-donate /proc/self/mem read of donated page",
};

/* A host read of a page the guest owns must raise SIGSEGV. */
static bool check_host_read_faults(struct vm *vm, unsigned int page, const char *key,
				   char *why, size_t len)
{
	uint64_t val = 0;
	int sig = host_access(data_page(vm, page), &val, false);

	ktap_diag("%s=%s", key, signame(sig));
	if (sig == SIGSEGV)
		return true;
	if (sig)
		return fail(why, len, "host read raised %s, expected SIGSEGV", signame(sig));
	return fail(why, len, "host read of donated page succeeded (0x%" PRIx64 ")", val);
}

/* MEM_SHARE a page: the host must then see the guest's pattern and the
 * guest must see the host's writes. */
static bool check_shared_page(struct vm *vm, char *why, size_t len)
{
	uint8_t *page = data_page(vm, PG_SHARED);
	uint64_t granule, ret, val = 0, back = 0;
	unsigned long bad;
	int rc, sig;

	rc = vcpu_exec(vm, VCPU_MAIN, OP_MEMINFO, 0, 0, &granule);
	if (rc)
		return fail(why, len, "HYP_MEMINFO: %s", err_buf);
	ktap_diag("granule=%" PRId64, (int64_t)granule);
	if (granule != (uint64_t)page_size)
		return fail(why, len, "HYP_MEMINFO returned %" PRId64 ", page size %ld",
			    (int64_t)granule, page_size);

	rc = vcpu_exec(vm, VCPU_MAIN, OP_SHARE, PG_SHARED, 0, &ret);
	if (!rc)
		ktap_diag("share_ret=%" PRId64, (int64_t)ret);
	if (rc || ret)
		return fail(why, len, "MEM_SHARE failed: %s",
			    rc ? err_buf : "non-zero SMCCC return");

	sig = host_access(page, &val, false);
	ktap_diag("shared_read_signal=%s", signame(sig));
	if (sig)
		return fail(why, len, "host read of shared page raised %s", signame(sig));
	bad = host_mismatches(vm, PG_SHARED, 1);
	ktap_diag("shared_mismatches=%lu", bad);
	if (bad)
		return fail(why, len, "shared page lacks guest pattern in %lu words", bad);

	val = HOST_VALUE;
	sig = host_access(page, &val, true);
	if (sig)
		return fail(why, len, "host write to shared page raised %s", signame(sig));
	rc = vcpu_exec(vm, VCPU_MAIN, OP_READ, PG_SHARED, 0, &back);
	if (rc)
		return fail(why, len, "guest read-back: %s", err_buf);
	ktap_diag("guest_readback=0x%" PRIx64, back);
	if (back != HOST_VALUE)
		return fail(why, len, "guest read 0x%" PRIx64 " after host wrote 0x%llx",
			    back, HOST_VALUE);
	return true;
}

static bool check_unshare(struct vm *vm, char *why, size_t len)
{
	uint64_t ret, back = 0;
	int rc;

	rc = vcpu_exec(vm, VCPU_MAIN, OP_UNSHARE, PG_SHARED, 0, &ret);
	if (!rc)
		ktap_diag("unshare_ret=%" PRId64, (int64_t)ret);
	if (rc || ret)
		return fail(why, len, "MEM_UNSHARE failed: %s",
			    rc ? err_buf : "non-zero SMCCC return");
	if (!check_host_read_faults(vm, PG_SHARED, "unshared_read_signal", why, len))
		return false;
	/* The guest keeps the page, host write included. */
	rc = vcpu_exec(vm, VCPU_MAIN, OP_READ, PG_SHARED, 0, &back);
	if (rc)
		return fail(why, len, "guest read after unshare: %s", err_buf);
	ktap_diag("guest_value_after_unshare=0x%" PRIx64, back);
	return true;
}

/* After a syscall forcibly reclaimed a donated page, the hypervisor has
 * zeroed it and given it back to the host; the guest's next access to it
 * must make KVM_RUN fail with EFAULT (pkvm.rst). That leaves the vCPU stuck
 * on the access, so each check uses a vCPU of its own. */
static bool check_reclaimed(struct vm *vm, int vcpu, unsigned int page, uint64_t got,
			    const char *key, char *why, size_t len)
{
	uint64_t val = 0;
	int rc, sig;

	ktap_diag("%s_path=reclaim", key);
	ktap_diag("%s_reclaimed_value=0x%" PRIx64, key, got);
	sig = host_access(data_page(vm, page), &val, false);
	if (sig)
		ktap_diag("%s_host_read_after_reclaim=%s", key, signame(sig));
	else
		ktap_diag("%s_host_read_after_reclaim=0x%" PRIx64, key, val);
	if (got == pattern(page))
		return fail(why, len, "%s leaked the guest pattern", key);

	rc = vcpu_exec(vm, vcpu, OP_READ, page, 0, &val);
	ktap_diag("%s_guest_access_after_reclaim=%s", key, rc ? errname(-rc) : "ok");
	if (rc == -EFAULT)
		return true;
	if (rc)
		return fail(why, len, "guest access after reclaim: %s (expected EFAULT)",
			    err_buf);
	return fail(why, len, "guest access after reclaim succeeded (0x%" PRIx64
		    "), expected KVM_RUN EFAULT", val);
}

/* A syscall touching a donated page either fails with EFAULT or forcibly
 * reclaims it. n/e: the syscall's return value and errno. */
static bool check_syscall_result(struct vm *vm, int vcpu, unsigned int page, ssize_t n,
				 int e, uint64_t got, const char *key, char *why, size_t len)
{
	if (n < 0 && e == EFAULT) {
		ktap_diag("%s_path=efault", key);
		return true;
	}
	if (n != (ssize_t)sizeof(got))
		return fail(why, len, "%s returned %zd (%s)", key, n,
			    n < 0 ? errname(e) : "short");
	return check_reclaimed(vm, vcpu, page, got, key, why, len);
}

/* write(2) from the page into a pipe: a uaccess, which has an exception
 * fixup, so 7.3 takes the EFAULT path. (Not /dev/null: it never reads.) */
static bool check_write(struct vm *vm, char *why, size_t len)
{
	uint64_t got = ~0ULL;
	int pfd[2], e;
	ssize_t n;

	if (pipe(pfd))
		ktap_bail("pipe: %s", strerror(errno));
	n = write(pfd[1], data_page(vm, PG_WRITE), sizeof(got));
	e = errno;
	if (n == (ssize_t)sizeof(got) && read(pfd[0], &got, sizeof(got)) != (ssize_t)sizeof(got))
		got = ~0ULL;
	close(pfd[0]);
	close(pfd[1]);
	return check_syscall_result(vm, VCPU_WRITE, PG_WRITE, n, e, got, "write", why, len);
}

/* pread(2) of /proc/self/mem: the kernel copies from the pinned page
 * through its own mapping, with no fixup, so 7.3 takes the forced-reclaim
 * path. */
static bool check_procmem(struct vm *vm, char *why, size_t len)
{
	uint64_t got = ~0ULL;
	int fd, e;
	ssize_t n;

	fd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		ktap_bail("open /proc/self/mem: %s", strerror(errno));
	n = pread(fd, &got, sizeof(got), (off_t)(uintptr_t)data_page(vm, PG_PROCMEM));
	e = errno;
	close(fd);
	return check_syscall_result(vm, VCPU_PROCMEM, PG_PROCMEM, n, e, got, "procmem",
				    why, len);
}

static int cmd_pvm_donate(void)
{
	const int n = sizeof(donate_names) / sizeof(donate_names[0]);
	uint64_t pa_before, pa_after;
	struct vm vm;
	char why[320] = "";
	int t;

	ktap_header(n);
	if (!require_protected(donate_names, n))
		return ktap_exit_code();
	if (vm_setup(&vm, true, DONATE_PAGES, DONATE_VCPUS))
		ktap_bail("%s", err_buf);

	/* Touch the pages first so that they have a PA before donation. */
	memset(data_page(&vm, 0), 0, DONATE_PAGES * page_size);
	pagemap_pa(data_page(&vm, PG_READ), 1, &pa_before);
	ktap_diag("page_pa_before=0x%" PRIx64, pa_before);

	if (guest_fill_verify(&vm, 0, 0, DONATE_PAGES)) {
		snprintf(why, sizeof(why), "guest run failed: %s", err_buf);
		ktap_result(0, 0, donate_names[0], why);
		for (t = 1; t < n; t++)
			ktap_result(0, 0, donate_names[t], "guest did not run");
		goto out;
	}
	ktap_result(1, 0, donate_names[0], NULL);

	/* The page is pinned while donated: pagemap still resolves it. */
	pagemap_pa(data_page(&vm, PG_READ), 1, &pa_after);
	ktap_diag("page_pa=0x%" PRIx64, pa_after);

	ktap_result(check_host_read_faults(&vm, PG_READ, "host_read_signal", why, sizeof(why)),
		    0, donate_names[1], why);
	ktap_result(check_shared_page(&vm, why, sizeof(why)), 0, donate_names[2], why);
	ktap_result(check_unshare(&vm, why, sizeof(why)), 0, donate_names[3], why);
	ktap_result(check_write(&vm, why, sizeof(why)), 0, donate_names[4], why);
	ktap_result(check_procmem(&vm, why, sizeof(why)), 0, donate_names[5], why);
out:
	vm_destroy(&vm, false);
	return ktap_exit_code();
}

/* pvm-teardown ---------------------------------------------------------- */

struct scrub_stats {
	unsigned int pattern;	/* pages still holding the guest pattern */
	unsigned int nonzero;	/* pages with any non-zero word */
	unsigned int faults;	/* pages the host could not read */
};

static struct scrub_stats scan_after_teardown(struct vm *vm, unsigned int pages)
{
	struct scrub_stats s = { 0 };

	for (unsigned int p = 0; p < pages; p++) {
		uint64_t *w = (uint64_t *)data_page(vm, p), first;
		bool pat = false, nz = false;

		/* One guarded read per page: if it works, the whole page does. */
		if (host_access(w, &first, false)) {
			s.faults++;
			continue;
		}
		for (size_t i = 0; i < page_size / sizeof(*w); i++) {
			pat |= w[i] == pattern(p);
			nz |= w[i] != 0;
		}
		s.pattern += pat;
		s.nonzero += nz;
	}
	return s;
}

static int cmd_pvm_teardown(unsigned int pages)
{
	static const char *const names[] = {
		"pvm-teardown guest writes pattern",
		"pvm-teardown pages scrubbed after teardown",
		"pvm-teardown memory returned",
	};
	long before, during, after, guest_kb = (long)pages * page_size / 1024;
	long lck_during, lck_after;
	unsigned int known = 0, same = 0;
	struct scrub_stats s;
	char why[320] = "";
	uint64_t *pa, *pa2;
	struct vm vm;
	bool ran;
	double t0;

	ktap_header(3);
	if (!require_protected(names, 3))
		return ktap_exit_code();
	ktap_diag("pages=%u", pages);
	pa = calloc(pages, sizeof(*pa));
	pa2 = calloc(pages, sizeof(*pa2));
	if (!pa || !pa2)
		ktap_bail("calloc: out of memory");

	before = memfree_kb();
	if (vm_setup(&vm, true, pages, 1))
		ktap_bail("%s", err_buf);
	memset(data_page(&vm, 0), 0, (size_t)pages * page_size);
	ran = !guest_fill_verify(&vm, 0, 0, pages);
	snprintf(why, sizeof(why), "guest run failed: %s", err_buf);
	ktap_result(ran, 0, names[0], why);

	pagemap_pa(data_page(&vm, 0), pages, pa);
	for (unsigned int p = 0; p < pages; p++)
		known += !!pa[p];
	ktap_diag("pages_pa_known=%u", known);
	ktap_diag("first_page_pa=0x%" PRIx64, pa[0]);
	during = memfree_kb();
	lck_during = vmlck_kb();

	t0 = now_ms();
	vm_destroy(&vm, true);
	ktap_diag("metric: teardown_ms=%.3f ms", now_ms() - t0);
	lck_after = vmlck_kb();

	/* Same virtual pages, and (if pagemap says so) the same physical
	 * pages the guest owned: after teardown they must be zeroed. */
	pagemap_pa(data_page(&vm, 0), pages, pa2);
	for (unsigned int p = 0; p < pages; p++)
		same += pa[p] && pa[p] == pa2[p];
	ktap_diag("pa_unchanged_after_teardown=%u/%u", same, known);
	s = scan_after_teardown(&vm, pages);
	ktap_diag("pattern_pages_after_teardown=%u", s.pattern);
	ktap_diag("nonzero_pages_after_teardown=%u", s.nonzero);
	ktap_diag("host_read_faults_after_teardown=%u", s.faults);
	if (!ran)
		snprintf(why, sizeof(why), "guest did not run");
	else if (s.pattern)
		snprintf(why, sizeof(why), "guest pattern visible after teardown (%u pages)",
			 s.pattern);
	else
		snprintf(why, sizeof(why), "host read faulted after teardown (%u pages)", s.faults);
	ktap_result(ran && !s.pattern && !s.faults, 0, names[1], why);

	munmap(vm.mem, vm.mem_size);
	/* Freed pages first sit on per-CPU free lists, which MemFree does not
	 * count and which drain over seconds: give them time to settle. */
	t0 = now_ms();
	while ((after = memfree_kb()) >= 0 && before - after >= guest_kb / 2 &&
	       now_ms() - t0 < MEMFREE_SETTLE_MS)
		usleep(250 * 1000);
	ktap_diag("memfree_settle_ms=%.0f", now_ms() - t0);
	ktap_diag("memfree_before_kb=%ld", before);
	ktap_diag("memfree_during_kb=%ld", during);
	ktap_diag("memfree_after_kb=%ld", after);
	ktap_diag("guest_mem_kb=%ld", guest_kb);
	ktap_diag("vmlck_during_kb=%ld", lck_during);
	ktap_diag("vmlck_after_kb=%ld", lck_after);
	/* Precise: KVM unpinned (uncharged) every donated page. Coarse:
	 * MemFree is noisy (per-CPU free lists, other activity), so only a
	 * loss of half the guest's memory or more counts as not returned. */
	if (lck_after != 0)
		snprintf(why, sizeof(why), "%ld kB still locked (VmLck) after teardown", lck_after);
	else
		snprintf(why, sizeof(why), "MemFree dropped by %ld kB of %ld kB guest memory",
			 before - after, guest_kb);
	ktap_result(lck_after == 0 && before >= 0 && after >= 0 && before - after < guest_kb / 2,
		    0, names[2], why);
	free(pa);
	free(pa2);
	return ktap_exit_code();
}

/* pvm-rules ------------------------------------------------------------- */

/* A refusal is ok whatever the errno (kernel 7.3 uses EPERM); the errno or
 * "0" (accepted) goes out as a diagnostic. */
static void report_refusal(const char *name, const char *key, int rc)
{
	char why[320];

	ktap_diag("%s=%s", key, rc ? errname(-rc) : "0");
	snprintf(why, sizeof(why), "not refused (ioctl returned 0)");
	ktap_result(rc < 0, 0, name, why);
}

/* Drop/restore CAP_IPC_LOCK in the effective set only (root would bypass
 * RLIMIT_MEMLOCK with it); the permitted set keeps it for restoring. */
static int cap_ipc_lock(bool on)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];

	if (syscall(SYS_capget, &hdr, data))
		return -errno;
	if (on)
		data[CAP_TO_INDEX(CAP_IPC_LOCK)].effective |= CAP_TO_MASK(CAP_IPC_LOCK);
	else
		data[CAP_TO_INDEX(CAP_IPC_LOCK)].effective &= ~CAP_TO_MASK(CAP_IPC_LOCK);
	return syscall(SYS_capset, &hdr, data) ? -errno : 0;
}

/* Donated pages are accounted against RLIMIT_MEMLOCK: with a soft limit of
 * 0 the first guest page fault (the payload fetch) must fail KVM_RUN. */
static void rule_mlock(const char *name)
{
	struct rlimit old, zero;
	struct vm vm;
	uint64_t res;
	char why[320];
	int rc;

	if (getrlimit(RLIMIT_MEMLOCK, &old))
		ktap_bail("getrlimit: %s", strerror(errno));
	zero = old;
	zero.rlim_cur = 0;
	if (setrlimit(RLIMIT_MEMLOCK, &zero))
		ktap_bail("setrlimit(RLIMIT_MEMLOCK): %s", strerror(errno));
	ktap_diag("cap_ipc_lock_dropped=%d", cap_ipc_lock(false) == 0);

	if (vm_setup(&vm, true, 1, 1))
		ktap_bail("%s", err_buf);
	rc = vcpu_exec(&vm, 0, OP_FILL, 0, 1, &res);
	vm_destroy(&vm, false);

	cap_ipc_lock(true);
	setrlimit(RLIMIT_MEMLOCK, &old);

	ktap_diag("mlock_run=%s", rc ? errname(-rc) : "0");
	if (rc == -EPROTO)
		snprintf(why, sizeof(why), "unexpected: %s", err_buf);
	else
		snprintf(why, sizeof(why), "pVM ran with RLIMIT_MEMLOCK=0");
	ktap_result(rc < 0 && rc != -EPROTO, 0, name, why);
}

static int cmd_pvm_rules(void)
{
	static const char *const names[] = {
		"pvm-rules memslot move after run refused",
		"pvm-rules memslot delete after run refused",
		"pvm-rules readonly memslot refused",
		"pvm-rules dirty logging refused",
		"pvm-rules low RLIMIT_MEMLOCK fails donation",
	};
	struct vm vm;
	char why[320];

	ktap_header(5);
	if (!require_protected(names, 5))
		return ktap_exit_code();

	/* Memslots are frozen once the pVM has run (the first KVM_RUN
	 * creates it in the hypervisor). */
	if (vm_setup(&vm, true, 1, 1))
		ktap_bail("%s", err_buf);
	if (guest_fill_verify(&vm, 0, 0, 1)) {
		snprintf(why, sizeof(why), "pVM did not run: %s", err_buf);
		ktap_result(0, 0, names[0], why);
		ktap_result(0, 0, names[1], why);
	} else {
		report_refusal(names[0], "move_errno",
			       set_memslot(&vm, 0, ram_ipa + 0x40000000ULL, vm.mem_size));
		report_refusal(names[1], "delete_errno", set_memslot(&vm, 0, ram_ipa, 0));
	}
	vm_destroy(&vm, false);

	/* Flags that need MMU notifiers / write-protection are refused at
	 * memslot creation, before any run. */
	if (vm_create(&vm, true, 1))
		ktap_bail("%s", err_buf);
	report_refusal(names[2], "readonly_errno",
		       set_memslot(&vm, KVM_MEM_READONLY, ram_ipa, vm.mem_size));
	report_refusal(names[3], "dirty_log_errno",
		       set_memslot(&vm, KVM_MEM_LOG_DIRTY_PAGES, ram_ipa, vm.mem_size));
	vm_destroy(&vm, false);

	rule_mlock(names[4]);
	return ktap_exit_code();
}

/* pvm-dma-isolation ----------------------------------------------------- */

/* QEMU's edu PCI device: see common/edu.h. Here it is used without a
 * driver, through sysfs, so that its bus addresses are physical addresses. */

/* The pVM data page holding the guest's secret (its FILL pattern). */
#define SECRET_PAGE		0
/* What the host puts in its bounce page (| word index): never the guest
 * pattern, and different from each other, so that each word says where
 * it came from. */
#define BOUNCE_FILLER		0xf111e7b0b0000000ULL
#define BOUNCE_DMA_DATA		0xd3a0d3a000000000ULL

struct edu {
	char bdf[32];
	char type_path[64];	/* IOMMU group type attribute, "" without a group */
	char type_before[32];	/* type to restore, "" if we did not change it */
	bool enabled_by_us;	/* we wrote enable=1, so write 0 when done */
	bool master_set;	/* we set bus master */
	struct edu_bar bar;	/* resource0 mmapped */
};

/* One device per run; global so that a bail out (exit) can restore it. */
static struct edu edu_dev;

/* A locked host page the device copies through. */
struct bounce {
	uint64_t *va;
	uint64_t pa;
};

/* A bound driver owns the device's DMA (and blocks a change of the group's
 * domain type); driver_override would hand it to a driver at the next
 * probe. Leave the device with neither. */
static void edu_unbind(struct edu *e)
{
	char path[PATH_MAX], drv[64], ovr[64];
	int rc;

	pci_link_name(e->bdf, "driver", drv, sizeof(drv));
	ktap_diag("edu_driver_before=%s", drv[0] ? drv : "none");
	if (drv[0]) {
		rc = sysfs_write(pci_dev_path(path, sizeof(path), e->bdf, "driver/unbind"), e->bdf);
		if (rc)
			ktap_bail("unbind %s from %s: %s", e->bdf, drv, strerror(-rc));
	}
	pci_dev_path(path, sizeof(path), e->bdf, "driver_override");
	if (sysfs_read_line(path, ovr, sizeof(ovr)) && ovr[0] && strcmp(ovr, "(null)")) {
		rc = sysfs_write(path, "\n");
		if (rc)
			ktap_bail("clear driver_override of %s: %s", e->bdf, strerror(-rc));
	}
}

/* In an identity domain the device's bus addresses are physical addresses,
 * so it can be pointed at the pVM page. A refused write is not an
 * environment failure: the device then stays in its DMA domain, where the
 * page is not mapped, and a kernel whose IOMMU blocks the DMA that way is
 * itself a result. */
static void edu_identity_domain(struct edu *e)
{
	char group[32], before[32] = "", after[32] = "?";
	int rc;

	pci_link_name(e->bdf, "iommu_group", group, sizeof(group));
	ktap_diag("iommu_group=%s", group[0] ? group : "none");
	if (!group[0]) {
		ktap_diag("iommu_domain=none");
		return;
	}
	snprintf(e->type_path, sizeof(e->type_path), "/sys/kernel/iommu_groups/%s/type", group);
	sysfs_read_line(e->type_path, before, sizeof(before));
	if (strcmp(before, "identity")) {
		rc = sysfs_write(e->type_path, "identity");
		if (rc)
			ktap_diag("iommu_domain_error=%s", errname(-rc));
		else
			copy_str(e->type_before, sizeof(e->type_before),
				 before[0] ? before : "DMA");
	}
	sysfs_read_line(e->type_path, after, sizeof(after));
	ktap_diag("iommu_domain=%s", after);
}

/* Read-modify-write the PCI command register through sysfs config. */
static int edu_command(struct edu *e, uint16_t set, uint16_t clear)
{
	char path[PATH_MAX];
	int fd, rc;
	uint16_t cmd;
	ssize_t n;

	fd = open(pci_dev_path(path, sizeof(path), e->bdf, "config"), O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = pread(fd, &cmd, sizeof(cmd), PCI_COMMAND);
	if (n == sizeof(cmd)) {
		cmd = (cmd | set) & ~clear;
		n = pwrite(fd, &cmd, sizeof(cmd), PCI_COMMAND);
	}
	rc = n == sizeof(cmd) ? 0 : n < 0 ? -errno : -EIO;
	close(fd);
	return rc;
}

/* Turn the unbound device on: decoding of its BAR (enable), and bus
 * mastering, without which QEMU silently drops the device's DMA. */
static void edu_enable(struct edu *e)
{
	char path[PATH_MAX], en[16] = "";
	int rc;

	/* enable counts up: only balance what we add. */
	pci_dev_path(path, sizeof(path), e->bdf, "enable");
	if (sysfs_read_line(path, en, sizeof(en)) && !strcmp(en, "0")) {
		rc = sysfs_write(path, "1");
		if (rc)
			ktap_bail("enable %s: %s", e->bdf, strerror(-rc));
		e->enabled_by_us = true;
	}
	rc = edu_command(e, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER, 0);
	if (rc)
		ktap_bail("set bus master on %s: %s", e->bdf, strerror(-rc));
	e->master_set = true;
}

static void edu_map_bar(struct edu *e)
{
	char path[PATH_MAX];
	void *p;
	uint32_t id;
	int fd;

	fd = open(pci_dev_path(path, sizeof(path), e->bdf, "resource0"),
		  O_RDWR | O_SYNC | O_CLOEXEC);
	if (fd < 0)
		ktap_bail("open %s: %s", path, strerror(errno));
	p = mmap(NULL, EDU_BAR0_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		ktap_bail("mmap %s: %s", path, strerror(errno));
	e->bar.map = p;
	id = edu_read32(&e->bar, EDU_REG_ID);
	if (id != EDU_ID)
		ktap_bail("edu %s: id register 0x%08x, expected 0x%08x", e->bdf, id, EDU_ID);
}

/* Undo edu_prepare() except the unbind (the device is left without a
 * driver). Idempotent: runs at the end and again at exit. */
static void edu_restore(struct edu *e)
{
	char path[PATH_MAX];

	if (e->bar.map)
		munmap((void *)e->bar.map, EDU_BAR0_SIZE);
	e->bar.map = NULL;
	if (e->master_set)
		edu_command(e, 0, PCI_COMMAND_MASTER);
	e->master_set = false;
	if (e->enabled_by_us)
		sysfs_write(pci_dev_path(path, sizeof(path), e->bdf, "enable"), "0");
	e->enabled_by_us = false;
	/* Only possible with no driver bound, which is how we leave it. */
	if (e->type_before[0])
		sysfs_write(e->type_path, e->type_before);
	e->type_before[0] = '\0';
}

/* A bail out must not leave a bus-mastering device in an identity domain. */
static void edu_restore_at_exit(void)
{
	edu_restore(&edu_dev);
}

static void edu_prepare(struct edu *e, const char *bdf)
{
	edu_find(bdf, e->bdf, sizeof(e->bdf), NULL);
	ktap_diag("edu_bdf=%s", e->bdf);
	atexit(edu_restore_at_exit);
	edu_unbind(e);
	edu_identity_domain(e);
	edu_enable(e);
	edu_map_bar(e);
}

/* One edu_dma() between RAM at physical address pa and the device buffer;
 * a device that does not complete it leaves nothing to test. */
static void edu_xfer(struct edu *e, bool to_ram, uint64_t pa, size_t count)
{
	if (edu_dma(&e->bar, to_ram, pa, (uint32_t)count, NULL))
		ktap_bail("edu DMA (%s): %s", to_ram ? "buffer to RAM" : "RAM to buffer",
			  e->bar.err);
}

/* edu has no RAM-to-RAM DMA: copy through its buffer. */
static void edu_copy(struct edu *e, uint64_t src_pa, uint64_t dst_pa, size_t count)
{
	edu_xfer(e, false, src_pa, count);
	edu_xfer(e, true, dst_pa, count);
}

/* mlock keeps the page resident at one PA while the device uses it. */
static void bounce_alloc(struct bounce *b)
{
	void *p = mmap(NULL, page_size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		ktap_bail("mmap bounce page: %s", strerror(errno));
	if (mlock(p, page_size))
		ktap_bail("mlock bounce page: %s", strerror(errno));
	memset(p, 0, page_size);
	b->va = p;
	pagemap_pa(b->va, 1, &b->pa);
	if (!b->pa)
		ktap_bail("no PA for the bounce page in /proc/self/pagemap (needs CAP_SYS_ADMIN)");
}

static void bounce_fill(struct bounce *b, uint64_t base)
{
	for (size_t i = 0; i < page_size / sizeof(*b->va); i++)
		b->va[i] = base | i;
}

static bool bounce_holds(const struct bounce *b, uint64_t base, size_t count)
{
	for (size_t i = 0; i < count / sizeof(*b->va); i++)
		if (b->va[i] != (base | i))
			return false;
	return true;
}

/* The positive control: can the device reach host memory at all, in the
 * same domain, on a page that is not donated? Copy the filler out of the
 * bounce page and back in (cleared in between). If it cannot, a "blocked"
 * below proves nothing: the control is a test of its own, and fails. It
 * also leaves the filler in the device buffer, so that a blocked read of
 * the pVM page cannot return what an earlier run left there. */
static bool dma_control(struct edu *e, struct bounce *h, size_t count, char *why, size_t len)
{
	bool works;

	bounce_fill(h, BOUNCE_FILLER);
	edu_xfer(e, false, h->pa, count);
	memset(h->va, 0, page_size);
	edu_xfer(e, true, h->pa, count);
	works = bounce_holds(h, BOUNCE_FILLER, count);
	ktap_diag("host_dma_control=%s", works ? "works" : "blocked");
	if (!works)
		return fail(why, len, "positive control failed: the edu's DMA to a host page that is not"
			    " donated did not land, so a blocked DMA below would prove nothing");
	return true;
}

/* Test 1: the device copies the pVM page into the bounce page. Any word of
 * the guest's pattern there is a leak. */
static bool check_dma_read(struct edu *e, struct bounce *h, uint64_t page_pa, size_t count,
			   char *why, size_t len)
{
	size_t words = count / sizeof(*h->va), secret = 0, zero = 0;
	const char *result;

	bounce_fill(h, BOUNCE_FILLER);
	edu_copy(e, page_pa, h->pa, count);
	for (size_t i = 0; i < words; i++) {
		secret += h->va[i] == pattern(SECRET_PAGE);
		zero += !h->va[i];
	}
	if (secret)
		result = "secret";
	else if (bounce_holds(h, BOUNCE_FILLER, count))
		result = "filler";
	else if (zero == words)
		result = "zeroed";
	else
		result = "other";
	ktap_diag("dma_read_result=%s", result);
	ktap_diag("dma_read_secret_words=%zu/%zu", secret, words);
	if (secret)
		return fail(why, len, "host DMA reached protected memory: read the guest's secret");
	return true;
}

/* Test 2: the device copies a host pattern into the pVM page; the guest,
 * the only one who can look, checks whether its page still holds its own
 * pattern. */
static bool check_dma_write(struct vm *vm, struct edu *e, struct bounce *h, uint64_t page_pa,
			    size_t count, char *why, size_t len)
{
	uint64_t bad;
	int rc;

	bounce_fill(h, BOUNCE_DMA_DATA);
	edu_copy(e, h->pa, page_pa, count);
	rc = vcpu_exec(vm, 0, OP_VERIFY, SECRET_PAGE, 1, &bad);
	if (rc) {
		ktap_diag("dma_write_result=unknown");
		return fail(why, len, "guest could not check its page after the DMA write: %s (%s)",
			    err_buf, errname(-rc));
	}
	ktap_diag("guest_bad_words=%" PRIu64, bad);
	ktap_diag("dma_write_result=%s", bad ? "landed" : "blocked");
	if (bad)
		return fail(why, len, "host DMA reached protected memory: overwrote the guest's page");
	return true;
}

static int cmd_pvm_dma_isolation(const char *bdf)
{
	static const char *const names[] = {
		"host DMA to a page not donated (positive control)",
		"host DMA read of a donated page",
		"host DMA write into a donated page",
	};
	size_t count = page_size < EDU_BUF_SIZE ? page_size : EDU_BUF_SIZE;
	struct bounce h;
	uint64_t page_pa;
	struct vm vm;
	char why[320] = "";

	ktap_header(3);
	if (!require_protected(names, 3))
		return ktap_exit_code();
	if (vm_setup(&vm, true, 1, 1))
		ktap_bail("%s", err_buf);
	/* The guest's first access donates the page; it then holds the secret. */
	if (guest_fill_verify(&vm, 0, SECRET_PAGE, 1)) {
		snprintf(why, sizeof(why), "guest run failed: %s", err_buf);
		ktap_result(0, 0, names[0], "guest did not run");
		ktap_result(0, 0, names[1], why);
		ktap_result(0, 0, names[2], "guest did not run");
		goto out;
	}
	/* Donated pages are pinned: the VMM's mapping still resolves to them. */
	pagemap_pa(data_page(&vm, SECRET_PAGE), 1, &page_pa);
	ktap_diag("page_pa=0x%" PRIx64, page_pa);
	if (!page_pa)
		ktap_bail("no PA for the donated page in /proc/self/pagemap (needs CAP_SYS_ADMIN)");
	bounce_alloc(&h);
	ktap_diag("bounce_pa=0x%" PRIx64, h.pa);

	edu_prepare(&edu_dev, bdf);
	ktap_diag("dma_count=%zu", count);
	ktap_result(dma_control(&edu_dev, &h, count, why, sizeof(why)), 0, names[0], why);
	ktap_result(check_dma_read(&edu_dev, &h, page_pa, count, why, sizeof(why)), 0,
		    names[1], why);
	ktap_result(check_dma_write(&vm, &edu_dev, &h, page_pa, count, why, sizeof(why)), 0,
		    names[2], why);
	edu_restore(&edu_dev);
	munmap(h.va, page_size);
out:
	vm_destroy(&vm, false);
	return ktap_exit_code();
}

/* pfnmap --------------------------------------------------------------- */

/* KVM memslots over VM_PFNMAP VMAs: device memory (a vfio-pci mmap of the
 * edu's BAR0, mapped non-cacheable as device memory) and, with the test
 * enablement driver, a cacheable VM_PFNMAP region of normal RAM, which 7.3
 * maps only when the CPU has S2FWB and DIC. */
#ifndef KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED
#define KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED 243
#endif
#define PFNMAP_SLOT		1
#define PFNMAP_IPA		0x40000000ULL	/* above the MMIO protocol addresses */
#define LIVENESS_VALUE		0x5a5aa5a5U
#define CACHEABLE_DEV		"/dev/test_cacheable_pfnmap"
#define CACHEABLE_PAGES		4		/* what the driver maps at most */
#define GUEST_VALUE32		0x9e570001U	/* what the guest stores */
#define HOST_VALUE32		0x40570002U	/* what the host stores */
/* kernel log lines of the two CPU capabilities (arch/arm64/kernel/cpufeature.c) */
#define LOG_S2FWB		"CPU features: detected: Stage-2 Force Write-Back"
#define LOG_DIC			"CPU features: detected: Instruction cache invalidation not required for I/D coherence"

/* CPU features as the kernel detected them: its own "CPU features:
 * detected:" lines, read with klogctl (the kernel sanitises ID registers
 * for EL0 and hides ID_AA64MMFR2_EL1.FWB; the log is what its
 * cpus_have_final_cap() decided). Bails if the log has no such lines at
 * all (wrapped or restricted): then nothing can be compared. */
static void kernel_cpu_features(bool *fwb, bool *dic)
{
	int len = klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0);
	char *buf;

	if (len <= 0)
		ktap_bail("klogctl(SIZE_BUFFER): %s", strerror(errno));
	buf = calloc(1, (size_t)len + 1);
	if (!buf)
		ktap_bail("out of memory");
	len = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, buf, len);
	if (len < 0)
		ktap_bail("klogctl(READ_ALL): %s", strerror(errno));
	buf[len] = '\0';
	if (!strstr(buf, "CPU features: detected:"))
		ktap_bail("no 'CPU features: detected:' line in the kernel log (wrapped?)");
	*fwb = strstr(buf, LOG_S2FWB) != NULL;
	*dic = strstr(buf, LOG_DIC) != NULL;
	free(buf);
}

/* CTR_EL0.DIC as EL0 reads it (the kernel may trap and emulate CTR_EL0):
 * a cross-check printed as a diagnostic only. */
static int ctr_el0_dic(void)
{
	uint64_t ctr;

	__asm__ __volatile__("mrs %0, ctr_el0" : "=r"(ctr));
	return (ctr >> 29) & 1;
}

/* The edu's BAR0 mmapped through vfio-pci (VFIO group/container API, from
 * common/vfio.h; no DMA, so no mappings and no bus mastering). */
struct vfio_bar {
	struct vfio_type1 t;
	void *map;
	size_t size;
};

static void vfio_map_bar0(struct vfio_bar *b)
{
	struct vfio_region_info bar;
	char bdf[32], drv[64];
	int group;

	edu_find(NULL, bdf, sizeof(bdf), NULL);
	ktap_diag("edu_bdf=%s", bdf);
	pci_link_name(bdf, "driver", drv, sizeof(drv));
	ktap_diag("edu_driver_before=%s", drv[0] ? drv : "none");
	vfio_bind_pci(bdf);
	group = vfio_iommu_group(bdf);
	ktap_diag("iommu_group=%d", group);
	vfio_type1_open(bdf, group, &b->t);
	b->map = vfio_region_map(b->t.device, VFIO_PCI_BAR0_REGION_INDEX, "BAR0",
				 (uint64_t)page_size, true, &bar);
	b->size = bar.size;
	ktap_diag("bar0_size=0x%zx", b->size);
	ktap_diag("host_edu_id=0x%08x", *(volatile uint32_t *)b->map);
}

static void vfio_unmap_bar0(struct vfio_bar *b)
{
	munmap(b->map, b->size);
	vfio_type1_close(&b->t);
}

/* Run one LOAD32/STORE32 on vCPU 0: the command word, then its arguments
 * at the guest's ARG loads, then the result store. */
static int vcpu_access32(struct vm *vm, unsigned int op, uint64_t ipa, uint32_t val,
			 uint64_t *result)
{
	struct vcpu *v = &vm->vcpu[0];
	uint64_t args[2] = { ipa, val }, cmd = op;
	unsigned int nargs = op == OP_STORE32 ? 2 : 1;
	int rc = vcpu_run(v);

	if (rc)
		return rc;
	if (!is_mmio(v->run, VMM_MMIO_CMD, false))
		return unexpected_exit(v, "command fetch");
	memcpy(v->run->mmio.data, &cmd, sizeof(cmd));
	for (unsigned int i = 0; i < nargs; i++) {
		rc = vcpu_run(v);
		if (rc)
			return rc;
		if (!is_mmio(v->run, VMM_MMIO_ARG, false))
			return unexpected_exit(v, "argument fetch");
		memcpy(v->run->mmio.data, &args[i], sizeof(args[i]));
	}
	rc = vcpu_run(v);
	if (rc)
		return rc;
	if (!is_mmio(v->run, VMM_MMIO_RESULT, true))
		return unexpected_exit(v, op == OP_LOAD32 ? "32-bit load" : "32-bit store");
	memcpy(result, v->run->mmio.data, sizeof(*result));
	return 0;
}

/* A VM (RAM slot 0, one vCPU) plus slot PFNMAP_SLOT over host memory at
 * hva. 0 if the slot was accepted; -errno of KVM_SET_USER_MEMORY_REGION
 * (*slot_refused set) or of the VM setup otherwise. */
static int pfnmap_vm(struct vm *vm, bool protected, void *hva, size_t size, bool *slot_refused)
{
	struct kvm_userspace_memory_region r = {
		.slot = PFNMAP_SLOT,
		.guest_phys_addr = PFNMAP_IPA,
		.memory_size = size,
		.userspace_addr = (uintptr_t)hva,
	};
	int rc = vm_setup(vm, protected, 1, 1);

	*slot_refused = false;
	if (rc)
		return rc;
	if (ioctl(vm->fd, KVM_SET_USER_MEMORY_REGION, &r)) {
		*slot_refused = true;
		return set_err(errno, "KVM_SET_USER_MEMORY_REGION(PFNMAP slot): %s", errname(errno));
	}
	return 0;
}

/* Outcome of a guest access over a PFNMAP slot that the kernel may refuse
 * (pKVM): refused cleanly (the memslot ioctl or KVM_RUN failed with an
 * errno), or an error the protocol did not expect (guest exception,
 * stray exit, timeout): never clean. */
static bool clean_refusal(int rc)
{
	return rc != -EPROTO && rc != -ETIMEDOUT;
}

/* What each VM type must do with a PFNMAP slot. nvhe (no pKVM), normal
 * VM: map it. pKVM, normal VM: map it or refuse it cleanly (the hyp's
 * __pkvm_host_share_guest() takes only memory, RWX). pVM: refuse it
 * (pkvm.rst: apart from swap, file-backed pages cannot be mapped into a
 * pVM; pkvm_mem_abort() pins anonymous pages only). */
enum pfnmap_rule { MUST_MAP, MAP_OR_REFUSE, MUST_REFUSE };

static enum pfnmap_rule pfnmap_rule(bool protected, bool pkvm)
{
	if (protected)
		return MUST_REFUSE;
	return pkvm ? MAP_OR_REFUSE : MUST_MAP;
}

/* rc: outcome of slot + accesses (0: the guest ran them all). Returns the
 * test verdict for a refusal, or -1 if the accesses ran and must be
 * checked by the caller. */
static int judge_refusal(int rc, bool slot_refused, enum pfnmap_rule rule, const char *key,
			 char *why, size_t len)
{
	if (!rc) {
		ktap_diag("%s=mapped", key);
		if (rule == MUST_REFUSE)
			return fail(why, len, "protected VM mapped a VM_PFNMAP region (pkvm.rst: "
				    "only anonymous or swap-backed memory)");
		return -1;
	}
	ktap_diag("%s=refused_%s", key, slot_refused ? "memslot" : "run");
	ktap_diag("%s_error=%s", key, err_buf);
	if (!clean_refusal(rc))
		return fail(why, len, "not a clean refusal: %s", err_buf);
	if (rule == MUST_MAP)
		return fail(why, len, "refused without pKVM: %s", err_buf);
	return true;
}

static bool check_device_slot(bool protected, bool pkvm, char *why, size_t len)
{
	struct vfio_bar bar;
	struct vm vm;
	uint64_t id = 0, inv = 0, dummy;
	bool slot_refused;
	int rc, verdict;

	vfio_map_bar0(&bar);
	rc = pfnmap_vm(&vm, protected, bar.map, bar.size, &slot_refused);
	if (!rc)
		rc = vcpu_access32(&vm, OP_LOAD32, PFNMAP_IPA + EDU_REG_ID, 0, &id);
	if (!rc)
		rc = vcpu_access32(&vm, OP_STORE32, PFNMAP_IPA + EDU_REG_LIVENESS, LIVENESS_VALUE,
				   &dummy);
	if (!rc)
		rc = vcpu_access32(&vm, OP_LOAD32, PFNMAP_IPA + EDU_REG_LIVENESS, 0, &inv);
	vm_destroy(&vm, false);
	vfio_unmap_bar0(&bar);
	verdict = judge_refusal(rc, slot_refused, pfnmap_rule(protected, pkvm), "device_slot",
				why, len);
	if (verdict >= 0)
		return verdict;
	ktap_diag("guest_edu_id=0x%08" PRIx64, id);
	ktap_diag("guest_liveness=0x%08" PRIx64, inv);
	if (id != EDU_ID)
		return fail(why, len, "guest read edu ID 0x%08" PRIx64 " through the slot, want 0x%08x",
			    id, EDU_ID);
	if (inv != (uint32_t)~LIVENESS_VALUE)
		return fail(why, len, "guest wrote liveness 0x%08x, read back 0x%08" PRIx64
			    ", want 0x%08x", LIVENESS_VALUE, inv, (uint32_t)~LIVENESS_VALUE);
	return true;
}

/* hw: the CPU has S2FWB && DIC (kvm_supports_cacheable_pfnmap()). Where it
 * does not, 7.3's kvm_arch_prepare_memory_region() refuses a cacheable
 * VM_PFNMAP memslot with EINVAL, for any VM type. Where it does, the pVM
 * rule of pfnmap_rule() applies, whatever the pVM's (hidden) cap says. */
static bool check_cacheable_slot(bool protected, bool pkvm, bool hw, char *why, size_t len)
{
	size_t size = CACHEABLE_PAGES * page_size;
	volatile uint32_t *host;
	uint64_t got = 0, dummy;
	bool slot_refused;
	struct vm vm;
	int fd, rc, verdict;
	void *map;

	fd = open(CACHEABLE_DEV, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		ktap_bail("open " CACHEABLE_DEV ": %s (kernel without the test enablement series?)",
			  strerror(errno));
	map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		ktap_bail("mmap " CACHEABLE_DEV ": %s", strerror(errno));
	host = map;
	host[0] = 0;
	host[1] = HOST_VALUE32;
	rc = pfnmap_vm(&vm, protected, map, size, &slot_refused);
	if (!hw) {
		ktap_diag("cacheable_slot=%s", slot_refused ? "refused_memslot" : "accepted");
		if (!slot_refused)
			verdict = fail(why, len, rc ? "VM setup failed: %s" : "no S2FWB && DIC but the "
				       "memslot was accepted%s", rc ? err_buf : "");
		else if (rc != -EINVAL)
			verdict = fail(why, len, "refused with %s, want EINVAL", err_buf);
		else
			verdict = true;
		if (slot_refused)
			ktap_diag("cacheable_slot_error=%s", err_buf);
		vm_destroy(&vm, false);
		munmap(map, size);
		close(fd);
		return verdict;
	}
	if (!rc)
		rc = vcpu_access32(&vm, OP_STORE32, PFNMAP_IPA, GUEST_VALUE32, &dummy);
	if (!rc)
		rc = vcpu_access32(&vm, OP_LOAD32, PFNMAP_IPA + 4, 0, &got);
	vm_destroy(&vm, false);
	verdict = judge_refusal(rc, slot_refused, pfnmap_rule(protected, pkvm), "cacheable_slot",
				why, len);
	if (verdict < 0) {
		ktap_diag("host_sees=0x%08x", host[0]);
		ktap_diag("guest_sees=0x%08" PRIx64, got);
		if (host[0] != GUEST_VALUE32)
			verdict = fail(why, len, "host read 0x%08x after the guest stored 0x%08x",
				       host[0], GUEST_VALUE32);
		else if (got != HOST_VALUE32)
			verdict = fail(why, len, "guest read 0x%08" PRIx64 " where the host stored 0x%08x",
				       got, HOST_VALUE32);
		else
			verdict = true;
	}
	munmap(map, size);
	close(fd);
	return verdict;
}

/* cap: KVM_CHECK_EXTENSION on a VM fd of the given type. */
static int cacheable_cap(bool protected)
{
	int fd = ioctl(kvm_fd, KVM_CREATE_VM, protected ? KVM_VM_TYPE_ARM_PROTECTED : 0);
	int cap;

	if (fd < 0)
		ktap_bail("KVM_CREATE_VM(%s): %s", protected ? "protected" : "normal", strerror(errno));
	cap = ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED);
	close(fd);
	if (cap < 0)
		ktap_bail("KVM_CHECK_EXTENSION(CACHEABLE_PFNMAP_SUPPORTED) on a VM: %s", strerror(errno));
	return cap;
}

/* The cap's right answer on a VM fd: S2FWB && DIC for a normal VM; 0 for
 * a pVM, to which pKVM offers only the caps kvm_pkvm_ext_allowed() lists
 * (kvm_pkvm.h: "Certain features are allowed only for non-protected VMs"). */
static bool check_cap(bool protected, bool hw, int cap, char *why, size_t len)
{
	int want = protected ? 0 : hw;

	if (cap == want)
		return true;
	if (protected)
		return fail(why, len, "KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED=%d on a protected VM, "
			    "want 0 (pKVM hides it from pVMs)", cap);
	return fail(why, len, "KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED=%d but the kernel detected "
		    "S2FWB=%d DIC=%d", cap, hw, hw);
}

static int cmd_pfnmap(bool protected, bool cacheable)
{
	const char *suffix = protected ? " protected" : "";
	char name[96], why[256] = "";
	bool fwb, dic, hw, pkvm;
	int prot, cap;

	ktap_header(cacheable ? 1 : 2);
	prot = probe_protected();
	if (prot < 0)
		ktap_bail("KVM_CREATE_VM(protected): %s", strerror(-prot));
	pkvm = prot;
	ktap_diag("protected_vm=%d", prot);
	if (protected && !prot) {
		ktap_result(1, 1, cacheable ? "pfnmap protected cacheable" : "pfnmap protected cap",
			    "protected VMs not supported");
		if (!cacheable)
			ktap_result(1, 1, "pfnmap protected device", "protected VMs not supported");
		return ktap_exit_code();
	}
	kernel_cpu_features(&fwb, &dic);
	hw = fwb && dic;
	cap = cacheable_cap(protected);
	ktap_diag("cpu_s2fwb=%d", fwb);
	ktap_diag("cpu_dic=%d", dic);
	ktap_diag("ctr_el0_dic=%d", ctr_el0_dic());
	ktap_diag("cap_cacheable_pfnmap=%d", cap);
	errno = 0;
	ktap_diag("cap_on_system_fd=%d (%s)",
		  ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED),
		  errname(errno));
	if (!cacheable) {
		snprintf(name, sizeof(name), "pfnmap%s cap agrees with %s", suffix,
			 protected ? "pKVM (0 for pVMs)" : "S2FWB && DIC");
		ktap_result(check_cap(protected, hw, cap, why, sizeof(why)), 0, name, why);
		snprintf(name, sizeof(name), "pfnmap%s device memslot over vfio-pci BAR0", suffix);
		ktap_result(check_device_slot(protected, pkvm, why, sizeof(why)), 0, name, why);
		return ktap_exit_code();
	}
	snprintf(name, sizeof(name), "pfnmap%s cacheable memslot %s", suffix,
		 !hw ? "refused with EINVAL" : protected ? "refused" : "shares writes");
	/* A normal VM's cap must agree here too: it is what a VMM would ask. */
	if (!protected && !check_cap(false, hw, cap, why, sizeof(why)))
		ktap_result(0, 0, name, why);
	else
		ktap_result(check_cacheable_slot(protected, pkvm, hw, why, sizeof(why)), 0, name, why);
	return ktap_exit_code();
}

/* pvm-share-dma (share_dma.c: the share-DMA invariant, both ways) */
#include "share_dma.c"

/* ---------------------------------------------------------------- main */

static void __attribute__((noreturn)) usage(const char *why)
{
	fprintf(stderr,
		"usage: pkvm-vmm probe | normal-vm | pvm-donate | pvm-rules\n"
		"       pkvm-vmm lifecycle [--cycles N[,N2...]] [--vcpus K[,K2...]] [--protected]\n"
		"                          [--leak-check]\n"
		"       pkvm-vmm pvm-teardown [--pages N]\n"
		"       pkvm-vmm pvm-dma-isolation [--bdf BDF]\n"
		"       pkvm-vmm pfnmap [--protected] [--cacheable]\n"
		"       pkvm-vmm pvm-share-dma --via type1|iommufd [--bdf BDF]\n");
	ktap_bail("usage: %s", why);
}

static int parse_int(const char *s, int min, int max)
{
	char *end;
	long v;

	if (!s)
		usage("missing option value");
	v = strtol(s, &end, 0);
	if (*end || v < min || v > max)
		usage("bad option value");
	return v;
}

/* "N" or "N1,N2,...": one field of each batch; a list shorter than the
 * other option's repeats its last value. Returns the list's length. */
static int parse_batches(const char *s, struct batch *batches, size_t field, int max)
{
	char buf[64], *tok, *save;
	int n = 0;

	if (!s || strlen(s) >= sizeof(buf))
		usage("bad option value");
	strcpy(buf, s);
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (n == MAX_BATCHES)
			usage("too many batches");
		*(int *)((char *)&batches[n++] + field) = parse_int(tok, 1, max);
	}
	for (int i = n; i < MAX_BATCHES; i++)
		*(int *)((char *)&batches[i] + field) = *(int *)((char *)&batches[n - 1] + field);
	return n;
}

int main(int argc, char **argv)
{
	int pages = 2048, nr_cycles = 1, nr_vcpus = 1;
	struct batch batches[MAX_BATCHES] = { { .cycles = 10, .vcpus = 1 } };
	bool protected = false, cacheable = false, leak_check = false;
	const char *cmd, *bdf = NULL, *via = NULL;

	if (argc < 2)
		usage("no subcommand");
	cmd = argv[1];
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--cycles"))
			nr_cycles = parse_batches(argv[++i], batches, offsetof(struct batch, cycles),
						  1000000);
		else if (!strcmp(argv[i], "--vcpus"))
			nr_vcpus = parse_batches(argv[++i], batches, offsetof(struct batch, vcpus),
						 MAX_VCPUS);
		else if (!strcmp(argv[i], "--leak-check"))
			leak_check = true;
		else if (!strcmp(argv[i], "--pages"))
			pages = parse_int(argv[++i], 1, 1 << 20);
		else if (!strcmp(argv[i], "--protected"))
			protected = true;
		else if (!strcmp(argv[i], "--cacheable"))
			cacheable = true;
		else if (!strcmp(argv[i], "--bdf") && argv[i + 1])
			bdf = argv[++i];
		else if (!strcmp(argv[i], "--via") && argv[i + 1])
			via = argv[++i];
		else
			usage(argv[i]);
	}

	if (getenv("PKVM_VMM_RAM_IPA"))
		ram_ipa = strtoull(getenv("PKVM_VMM_RAM_IPA"), NULL, 0);
	if (getenv("PKVM_VMM_RUN_TIMEOUT"))
		run_timeout_s = parse_int(getenv("PKVM_VMM_RUN_TIMEOUT"), 1, 86400);
	install_handlers();
	kvm_open();

	if (!strcmp(cmd, "probe"))
		return cmd_probe();
	if (!strcmp(cmd, "lifecycle"))
		return cmd_lifecycle(batches, nr_cycles > nr_vcpus ? nr_cycles : nr_vcpus,
				     protected, leak_check);
	if (!strcmp(cmd, "normal-vm"))
		return cmd_normal_vm();
	if (!strcmp(cmd, "pvm-donate"))
		return cmd_pvm_donate();
	if (!strcmp(cmd, "pvm-teardown"))
		return cmd_pvm_teardown(pages);
	if (!strcmp(cmd, "pvm-rules"))
		return cmd_pvm_rules();
	if (!strcmp(cmd, "pvm-dma-isolation"))
		return cmd_pvm_dma_isolation(bdf);
	if (!strcmp(cmd, "pfnmap"))
		return cmd_pfnmap(protected, cacheable);
	if (!strcmp(cmd, "pvm-share-dma")) {
		if (!via || (strcmp(via, "type1") && strcmp(via, "iommufd")))
			usage("pvm-share-dma needs --via type1|iommufd");
		return cmd_pvm_share_dma(!strcmp(via, "iommufd"), bdf);
	}
	usage(cmd);
}
