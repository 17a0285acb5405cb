/*
 * dma-map-bench: run the kernel's DMA map benchmark (CONFIG_DMA_MAP_BENCHMARK,
 * kernel/dma/map_benchmark.c) on a PCI device -- by default QEMU's edu
 * device (1234:11e8) -- to measure the cost of dma_map_single() and
 * dma_unmap_single() through the guest's IOMMU driver. Output is KTAP v1 with
 * "# metric:" lines (see README.md).
 *
 * The benchmark driver binds to a device only through driver_override and then
 * exposes /sys/kernel/debug/dma_map_benchmark, whose one ioctl runs N kernel
 * threads that map/unmap a buffer for S seconds and returns the mean and
 * standard deviation of both latencies in units of 100 ns.
 *
 * Exit code: 0 ok, 1 not ok (the benchmark ioctl failed), 2 bail out
 * (environment: no device, no driver, bind failed, no debugfs file).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <linux/types.h>

#include "args.h"
#include "ktap.h"
#include "pci.h"

/* ------------------------------------------------------------------ */
/* kernel ABI                                                          */

/*
 * struct map_benchmark and DMA_MAP_BENCHMARK, from include/linux/map_benchmark.h
 * (6.12; kernel-internal, copied by tools/testing/selftests/dma/
 * dma_map_benchmark.c) which later kernels moved to
 * include/uapi/linux/map_benchmark.h (7.3). Not in the libc/uapi headers we
 * build against, so defined here.
 *
 * The two layouts have the same size (136 bytes, hence the same ioctl number)
 * and differ only in the first byte after granule: 6.12 has expansion[76],
 * 7.3 has "__u8 map_mode" + expansion[75], where map_mode 0 is
 * DMA_MAP_BENCH_SINGLE_MODE (dma_map_single) and 1 is DMA_MAP_BENCH_SG_MODE.
 * We always send 0 there, which means single mode on 7.3 and an ignored
 * reserved byte on 6.12: the same measurement on both.
 */
struct map_benchmark {
	__u64 avg_map_100ns;   /* out: mean map latency, 100 ns units */
	__u64 map_stddev;      /* out: its standard deviation, 100 ns units */
	__u64 avg_unmap_100ns; /* out */
	__u64 unmap_stddev;    /* out */
	__u32 threads;         /* 1..1024 kernel threads mapping in parallel */
	__u32 seconds;         /* 1..300 */
	__s32 node;            /* NUMA node of the threads, -1: NUMA_NO_NODE */
	__u32 dma_bits;        /* dma_set_mask(DMA_BIT_MASK(dma_bits)) for the run */
	__u32 dma_dir;         /* DMA_MAP_BIDIRECTIONAL/TO_DEVICE/FROM_DEVICE */
	__u32 dma_trans_ns;    /* simulated transfer time between map and unmap */
	__u32 granule;         /* 1..1024 pages per mapping */
	__u8 map_mode;         /* 7.3: DMA_MAP_BENCH_SINGLE_MODE (0); 6.12: expansion[0] */
	__u8 expansion[75];
};

_Static_assert(sizeof(struct map_benchmark) == 136, "struct map_benchmark ABI size");
_Static_assert(offsetof(struct map_benchmark, granule) == 56, "struct map_benchmark layout");
_Static_assert(offsetof(struct map_benchmark, map_mode) == 60, "struct map_benchmark layout");

#define DMA_MAP_BENCHMARK _IOWR('d', 1, struct map_benchmark)
#define DMA_MAP_MAX_THREADS 1024
#define DMA_MAP_MAX_SECONDS 300
#define DMA_MAP_MAX_GRANULE 1024

#define DMA_MAP_BIDIRECTIONAL 0
#define DMA_MAP_TO_DEVICE 1
#define DMA_MAP_FROM_DEVICE 2

#define DMA_MAP_BENCH_SINGLE_MODE 0

#define NUMA_NO_NODE (-1)

#define BENCH_DRIVER "dma_map_benchmark"
#define DEBUGFS_DIR "/sys/kernel/debug"
#define BENCH_FILE DEBUGFS_DIR "/dma_map_benchmark"
#define DEBUGFS_MAGIC 0x64626720

#define EDU_VENDOR 0x1234
#define EDU_DEVICE 0x11e8

/* ------------------------------------------------------------------ */
/* options                                                             */

static const char *const dir_names[] = {
	[DMA_MAP_BIDIRECTIONAL] = "bidir",
	[DMA_MAP_TO_DEVICE] = "to",
	[DMA_MAP_FROM_DEVICE] = "from",
};

static struct options {
	const char *bdf;
	unsigned int threads;
	unsigned int seconds;
	unsigned int granule;
	unsigned int dir;
	unsigned int dma_bits;
} opt = {
	.threads = 1,
	.seconds = 2,
	.granule = 1,
	.dir = DMA_MAP_BIDIRECTIONAL,
	.dma_bits = 48,
};

/* ------------------------------------------------------------------ */
/* sysfs                                                               */

/* Lowest-numbered edu function, so the choice is stable across runs. */
static void find_edu(char *bdf, size_t len)
{
	if (pci_find_lowest(EDU_VENDOR, EDU_DEVICE, bdf, len))
		return;
	if (errno)
		ktap_bail("cannot list /sys/bus/pci/devices: %s", strerror(errno));
	ktap_bail("no edu device (%04x:%04x) found in /sys/bus/pci/devices: %s", EDU_VENDOR,
	     EDU_DEVICE, strerror(ENODEV));
}

/* Accepts "dddd:bb:dd.f" or "bb:dd.f"; writes the canonical form. */
static void parse_bdf(const char *in, char *bdf, size_t len)
{
	unsigned int dom;

	if (!pci_parse_bdf(in, bdf, len, &dom, NULL) || dom > 0xffff)
		ktap_bail("bad BDF '%s': %s", in, strerror(EINVAL));
}

/* ------------------------------------------------------------------ */
/* binding                                                             */

struct orig_state {
	char driver[64];   /* driver bound before we started, "" if none */
	char override[64]; /* driver_override before we started, "" if none */
};

static void save_state(const char *bdf, struct orig_state *st)
{
	char path[PATH_MAX];

	pci_link_name(bdf, "driver", st->driver, sizeof(st->driver));
	pci_dev_path(path, sizeof(path), bdf, "driver_override");
	if (!sysfs_read_line(path, st->override, sizeof(st->override)) ||
	    !strcmp(st->override, "(null)"))
		st->override[0] = '\0';
}

/* Hands the device to dma_map_benchmark. Returns 0, or -1 with the reason in
 * why; *changed says whether the binding was touched (and must be restored). */
static int bind_benchmark(const char *bdf, const struct orig_state *st, bool *changed,
			  char *why, size_t whylen)
{
	char path[PATH_MAX], drv[64];
	int err, probe_err, bind_err = 0;

	*changed = false;
	if (!strcmp(st->driver, BENCH_DRIVER))
		return 0;
	if (access("/sys/bus/pci/drivers/" BENCH_DRIVER, F_OK)) {
		snprintf(why, whylen,
			 "driver " BENCH_DRIVER " not available (CONFIG_DMA_MAP_BENCHMARK?): "
			 "/sys/bus/pci/drivers/" BENCH_DRIVER ": %s", strerror(errno));
		return -1;
	}

	*changed = true;
	if (st->driver[0]) {
		snprintf(path, sizeof(path), "/sys/bus/pci/drivers/%s/unbind", st->driver);
		err = sysfs_write(path, bdf);
		if (err) {
			snprintf(why, whylen, "unbind %s from %s: %s", bdf, st->driver,
				 strerror(-err));
			return -1;
		}
	}
	pci_dev_path(path, sizeof(path), bdf, "driver_override");
	err = sysfs_write(path, BENCH_DRIVER);
	if (err) {
		snprintf(why, whylen, "write " BENCH_DRIVER " to %s driver_override: %s", bdf,
			 strerror(-err));
		return -1;
	}

	probe_err = sysfs_write("/sys/bus/pci/drivers_probe", bdf);
	pci_link_name(bdf, "driver", drv, sizeof(drv));
	if (strcmp(drv, BENCH_DRIVER)) {
		/* drivers_probe can swallow the probe's error; bind reports it. */
		bind_err = sysfs_write("/sys/bus/pci/drivers/" BENCH_DRIVER "/bind", bdf);
		pci_link_name(bdf, "driver", drv, sizeof(drv));
	}
	if (strcmp(drv, BENCH_DRIVER)) {
		snprintf(why, whylen,
			 "bind %s to " BENCH_DRIVER " failed (driver now '%s'; drivers_probe: %s; bind: %s)",
			 bdf, drv[0] ? drv : "none", strerror(-probe_err), strerror(-bind_err));
		return -1;
	}
	return 0;
}

/* Unbinds from the benchmark and puts driver_override (and the original
 * driver, if any) back, so that later tests can bind e.g. vfio-pci. Failures
 * are diagnostics only: the measurement is already done. */
static void restore_binding(const char *bdf, const struct orig_state *st)
{
	char path[PATH_MAX], drv[64];
	int err;

	pci_link_name(bdf, "driver", drv, sizeof(drv));
	if (!strcmp(drv, BENCH_DRIVER)) {
		err = sysfs_write("/sys/bus/pci/drivers/" BENCH_DRIVER "/unbind", bdf);
		if (err)
			ktap_diag("restore: unbind %s from " BENCH_DRIVER ": %s", bdf,
				  strerror(-err));
	}
	/* An empty write ("\n") clears driver_override. */
	pci_dev_path(path, sizeof(path), bdf, "driver_override");
	err = sysfs_write(path, st->override[0] ? st->override : "\n");
	if (err)
		ktap_diag("restore: write %s: %s", path, strerror(-err));

	if (st->driver[0]) {
		err = sysfs_write("/sys/bus/pci/drivers_probe", bdf);
		pci_link_name(bdf, "driver", drv, sizeof(drv));
		if (strcmp(drv, st->driver))
			ktap_diag("restore: %s not rebound to %s (driver now '%s'; drivers_probe: %s)",
				  bdf, st->driver, drv, strerror(-err));
	} else {
		pci_link_name(bdf, "driver", drv, sizeof(drv));
		if (drv[0])
			ktap_diag("restore: %s still bound to %s", bdf, drv);
	}
}

/* ------------------------------------------------------------------ */
/* debugfs                                                             */

static void ensure_debugfs(void)
{
	struct statfs sfs;

	if (!access(BENCH_FILE, F_OK))
		return;
	if (!statfs(DEBUGFS_DIR, &sfs) && sfs.f_type == DEBUGFS_MAGIC)
		return; /* mounted; the file is simply not there */
	if (mount("debugfs", DEBUGFS_DIR, "debugfs", 0, NULL) && errno != EBUSY)
		ktap_diag("mount debugfs on " DEBUGFS_DIR ": %s", strerror(errno));
}

/* ------------------------------------------------------------------ */
/* diagnostics                                                         */

static void print_setup(const char *bdf, const struct orig_state *st)
{
	char path[PATH_MAX], name[128], group[32];

	ktap_diag("bdf=%s", bdf);
	if (!pci_link_name(bdf, "iommu", name, sizeof(name)))
		copy_str(name, sizeof(name), "none");
	ktap_diag("iommu=%s", name);

	if (pci_link_name(bdf, "iommu_group", group, sizeof(group))) {
		ktap_diag("iommu_group=%s", group);
		snprintf(path, sizeof(path), "/sys/kernel/iommu_groups/%s/type", group);
		if (sysfs_read_line(path, name, sizeof(name)))
			ktap_diag("iommu_domain=%s", name);
	}
	ktap_diag("orig_driver=%s", st->driver[0] ? st->driver : "none");
	ktap_diag("threads=%u seconds=%u granule=%u dir=%s dma_bits=%u", opt.threads,
		  opt.seconds, opt.granule, dir_names[opt.dir], opt.dma_bits);
}

/* ------------------------------------------------------------------ */
/* command line                                                        */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dma-map-bench [--bdf BDF] [--threads 1] [--seconds 2] [--granule 1]\n"
		"                     [--dir bidir|to|from] [--dma-bits 48]\n"
		"Runs the kernel DMA map benchmark (CONFIG_DMA_MAP_BENCHMARK) on BDF\n"
		"(default: the lowest-numbered QEMU edu device, 1234:11e8).\n"
		"exit: 0 ok, 1 benchmark failed, 2 bail out\n");
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

static unsigned int parse_uint(const char *name, const char *s, unsigned int min,
			       unsigned int max)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 0);
	if (errno || end == s || *end || *s == '-')
		usage_error("%s: '%s' is not a number", name, s);
	if (v < min || v > max)
		usage_error("%s: %lu not in %u..%u", name, v, min, max);
	return (unsigned int)v;
}

static void parse_args(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *val;
		char name[32];

		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			exit(0);
		}
		if (strncmp(a, "--", 2))
			usage_error("unexpected argument '%s'", a);
		val = opt_split(argc, argv, &i, name, sizeof(name));
		if (!val)
			usage_error("%s needs a value", a);

		if (!strcmp(name, "--bdf")) {
			opt.bdf = val;
		} else if (!strcmp(name, "--threads")) {
			opt.threads = parse_uint(name, val, 1, DMA_MAP_MAX_THREADS);
		} else if (!strcmp(name, "--seconds")) {
			opt.seconds = parse_uint(name, val, 1, DMA_MAP_MAX_SECONDS);
		} else if (!strcmp(name, "--granule")) {
			opt.granule = parse_uint(name, val, 1, DMA_MAP_MAX_GRANULE);
		} else if (!strcmp(name, "--dma-bits")) {
			opt.dma_bits = parse_uint(name, val, 24, 64);
		} else if (!strcmp(name, "--dir")) {
			size_t d;

			for (d = 0; d < sizeof(dir_names) / sizeof(dir_names[0]); d++)
				if (!strcmp(val, dir_names[d]))
					break;
			if (d == sizeof(dir_names) / sizeof(dir_names[0]))
				usage_error("--dir: '%s' is not bidir, to or from", val);
			opt.dir = (unsigned int)d;
		} else {
			usage_error("unknown option '%s'", name);
		}
	}
}

/* ------------------------------------------------------------------ */

/* The kernel copies the results back only if the threads completed at least
 * one map/unmap; otherwise the fields come back as sent. */
#define NO_SAMPLES UINT64_MAX

int main(int argc, char **argv)
{
	char bdf[32], path[PATH_MAX], name[128], why[256];
	struct orig_state st;
	struct map_benchmark mb;
	bool changed;
	int fd, ret, err = 0;

	parse_args(argc, argv);
	ktap_header(1);

	if (opt.bdf)
		parse_bdf(opt.bdf, bdf, sizeof(bdf));
	else
		find_edu(bdf, sizeof(bdf));
	pci_dev_path(path, sizeof(path), bdf, "");
	if (access(path, F_OK))
		ktap_bail("no PCI device %s: %s", bdf, strerror(errno));

	save_state(bdf, &st);
	print_setup(bdf, &st);
	ensure_debugfs();
	if (bind_benchmark(bdf, &st, &changed, why, sizeof(why))) {
		if (changed)
			restore_binding(bdf, &st);
		ktap_bail("%s", why);
	}

	fd = open(BENCH_FILE, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		err = errno;
		if (changed)
			restore_binding(bdf, &st);
		ktap_bail("open " BENCH_FILE ": %s", strerror(err));
	}

	memset(&mb, 0, sizeof(mb));
	mb.avg_map_100ns = NO_SAMPLES;
	mb.avg_unmap_100ns = NO_SAMPLES;
	mb.threads = opt.threads;
	mb.seconds = opt.seconds;
	mb.node = NUMA_NO_NODE;
	mb.dma_bits = opt.dma_bits;
	mb.dma_dir = opt.dir;
	mb.dma_trans_ns = 0;
	mb.granule = opt.granule;
	mb.map_mode = DMA_MAP_BENCH_SINGLE_MODE;

	ret = ioctl(fd, DMA_MAP_BENCHMARK, &mb);
	if (ret)
		err = errno;
	close(fd);
	if (changed)
		restore_binding(bdf, &st);

	snprintf(name, sizeof(name), "dma_map_benchmark threads=%u seconds=%u granule=%u",
		 opt.threads, opt.seconds, opt.granule);
	if (ret) {
		snprintf(why, sizeof(why), "DMA_MAP_BENCHMARK ioctl: %s (see dmesg)",
			 strerror(err));
		ktap_result(0, 0, name, why);
		return ktap_exit_code();
	}
	if (mb.avg_map_100ns == NO_SAMPLES || mb.avg_unmap_100ns == NO_SAMPLES) {
		ktap_result(0, 0, name, "benchmark completed no map/unmap iteration");
		return ktap_exit_code();
	}

	ktap_diag("metric: map_us=%.1f us", mb.avg_map_100ns / 10.0);
	ktap_diag("metric: unmap_us=%.1f us", mb.avg_unmap_100ns / 10.0);
	ktap_diag("metric: map_stddev_us=%.1f us", mb.map_stddev / 10.0);
	ktap_diag("metric: unmap_stddev_us=%.1f us", mb.unmap_stddev / 10.0);
	ktap_result(1, 0, name, NULL);
	return ktap_exit_code();
}
