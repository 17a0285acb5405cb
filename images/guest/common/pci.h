/* sysfs and PCI plumbing shared by the guest helpers: reading and writing
 * sysfs attributes, paths under /sys/bus/pci/devices/<bdf>, the names behind
 * a device's driver/iommu/iommu_group links, and finding a device by ID.
 *
 * Nothing here prints or exits: every function reports failure through its
 * return value (and errno where said), so that each helper keeps its own
 * "Bail out!" messages. All functions are static inline, so that a helper
 * that does not use one does not warn under -Werror. */
#ifndef PKVM_HARNESS_PCI_H
#define PKVM_HARNESS_PCI_H
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define PCI_DEVICES_DIR "/sys/bus/pci/devices"

/* Bounded copy that truncates silently (messages, names from sysfs). */
static inline void copy_str(char *dst, size_t len, const char *src)
{
	size_t n = strnlen(src, len - 1);

	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* First line of a file without its newline; false if unreadable. */
static inline bool sysfs_read_line(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "re");
	bool ok;

	if (!f)
		return false;
	ok = fgets(buf, (int)len, f) != NULL;
	fclose(f);
	if (ok)
		buf[strcspn(buf, "\n")] = '\0';
	return ok;
}

/* A hex number ("0x1234" or "1234") from the first line of a file. */
static inline bool sysfs_read_hex(const char *path, unsigned long *val)
{
	char buf[32];

	return sysfs_read_line(path, buf, sizeof(buf)) && sscanf(buf, "%lx", val) == 1;
}

/* Write a string to a sysfs attribute; 0 or -errno. */
static inline int sysfs_write(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), rc = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, s, strlen(s)) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

/* PCI_DEVICES_DIR/<bdf>/<attr> into buf; returns buf, for use in calls. */
static inline char *pci_dev_path(char *buf, size_t len, const char *bdf, const char *attr)
{
	snprintf(buf, len, PCI_DEVICES_DIR "/%s/%s", bdf, attr);
	return buf;
}

/* Last component of the symlink <attr> (driver, iommu, iommu_group) of the
 * device into out. False, with out = "" and errno from readlink, if there
 * is no such link (e.g. no driver bound). */
static inline bool pci_link_name(const char *bdf, const char *attr, char *out, size_t len)
{
	char path[PATH_MAX], target[PATH_MAX];
	const char *slash;
	ssize_t n;

	n = readlink(pci_dev_path(path, sizeof(path), bdf, attr), target, sizeof(target) - 1);
	if (n < 0) {
		out[0] = '\0';
		return false;
	}
	target[n] = '\0';
	slash = strrchr(target, '/');
	copy_str(out, len, slash ? slash + 1 : target);
	return true;
}

/* True if the device exists and has this vendor and device ID. */
static inline bool pci_is_device(const char *bdf, unsigned long vendor, unsigned long device)
{
	char path[PATH_MAX];
	unsigned long v, d;

	return sysfs_read_hex(pci_dev_path(path, sizeof(path), bdf, "vendor"), &v) &&
	       sysfs_read_hex(pci_dev_path(path, sizeof(path), bdf, "device"), &d) &&
	       v == vendor && d == device;
}

/* The lowest-numbered device with these IDs (so that the choice is stable
 * across runs) into bdf. False, with bdf = "", if there is none (errno 0)
 * or PCI_DEVICES_DIR cannot be listed (errno from opendir). */
static inline bool pci_find_lowest(unsigned long vendor, unsigned long device,
				   char *bdf, size_t len)
{
	DIR *d = opendir(PCI_DEVICES_DIR);
	struct dirent *de;

	bdf[0] = '\0';
	if (!d)
		return false;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.' && pci_is_device(de->d_name, vendor, device) &&
		    (!bdf[0] || strcmp(de->d_name, bdf) < 0))
			copy_str(bdf, len, de->d_name);
	closedir(d);
	if (!bdf[0])
		errno = 0;
	return bdf[0] != '\0';
}

/* Parses "dddd:bb:dd.f" or "bb:dd.f" (domain 0) into the canonical sysfs
 * name "dddd:bb:dd.f" in bdf. *domain (if not NULL) gets the domain, which
 * is not range-checked; *rid (if not NULL) the requester ID, (bus << 8) |
 * devfn, which is also the SMMU StreamID. False if malformed or the bus,
 * device or function is out of range; bdf is then unchanged. */
static inline bool pci_parse_bdf(const char *in, char *bdf, size_t len, unsigned int *domain,
				 unsigned int *rid)
{
	unsigned int dom = 0, bus, dev, fn;
	char tail;

	if (sscanf(in, "%x:%x:%x.%x%c", &dom, &bus, &dev, &fn, &tail) != 4) {
		dom = 0;
		if (sscanf(in, "%x:%x.%x%c", &bus, &dev, &fn, &tail) != 3)
			return false;
	}
	if (bus > 0xff || dev > 0x1f || fn > 7)
		return false;
	snprintf(bdf, len, "%04x:%02x:%02x.%x", dom, bus, dev, fn);
	if (domain)
		*domain = dom;
	if (rid)
		*rid = (bus << 8) | (dev << 3) | fn;
	return true;
}
#endif
