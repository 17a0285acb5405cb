/* VFIO plumbing shared by the guest helpers: handing a PCI device to
 * vfio-pci, its IOMMU group, the group/container (type1) and device cdev +
 * iommufd ways in, region info and mmap, and bus mastering.
 *
 * These are setup steps: where one fails the environment is unusable, so
 * they bail out (KTAP "Bail out!", exit 2) with a message naming the step,
 * the same messages in every helper. All functions are static inline. */
#ifndef PKVM_HARNESS_VFIO_H
#define PKVM_HARNESS_VFIO_H
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <linux/pci_regs.h>

#include "ktap.h"
#include "pci.h"
#include "vfio_uapi.h"

/* Hand the device to vfio-pci via driver_override (idempotent). */
static inline void vfio_bind_pci(const char *bdf)
{
	char path[PATH_MAX], drv[64];
	int err;

	pci_link_name(bdf, "driver", drv, sizeof(drv));
	if (!strcmp(drv, "vfio-pci"))
		return;
	if (access("/sys/bus/pci/drivers/vfio-pci", F_OK))
		ktap_bail("vfio-pci driver not available (/sys/bus/pci/drivers/vfio-pci: %s)",
			  strerror(errno));

	pci_dev_path(path, sizeof(path), bdf, "driver_override");
	err = sysfs_write(path, "vfio-pci");
	if (err)
		ktap_bail("write %s: %s", path, strerror(-err));
	if (drv[0]) {
		pci_dev_path(path, sizeof(path), bdf, "driver/unbind");
		err = sysfs_write(path, bdf);
		if (err)
			ktap_bail("unbind %s from %s: %s", bdf, drv, strerror(-err));
	}
	err = sysfs_write("/sys/bus/pci/drivers_probe", bdf);
	if (err)
		ktap_bail("probe %s with vfio-pci: %s", bdf, strerror(-err));

	pci_link_name(bdf, "driver", drv, sizeof(drv));
	if (strcmp(drv, "vfio-pci")) {
		char group[32];

		/* vfio-pci refuses a device that no IOMMU translates. */
		ktap_bail("vfio-pci did not bind to %s (driver now '%s'%s)", bdf, drv,
			  pci_link_name(bdf, "iommu_group", group, sizeof(group)) ?
				  "" : "; no IOMMU group");
	}
}

/* The device's IOMMU group number. */
static inline int vfio_iommu_group(const char *bdf)
{
	char path[PATH_MAX], group[32];
	int err;

	if (!pci_link_name(bdf, "iommu_group", group, sizeof(group))) {
		err = errno;
		ktap_bail("no IOMMU group for %s (%s: %s)", bdf,
			  pci_dev_path(path, sizeof(path), bdf, "iommu_group"), strerror(err));
	}
	return atoi(group);
}

/* Device nodes appear asynchronously after a bind; give devtmpfs a moment. */
static inline int vfio_open_retry(const char *path, int flags)
{
	for (int i = 0; i < 100; i++) {
		int fd = open(path, flags);

		if (fd >= 0 || errno != ENOENT)
			return fd;
		usleep(20 * 1000);
	}
	return open(path, flags);
}

/* The group/container way in. */
struct vfio_type1 {
	int container, group, device;
};

/* A type1v2 container with the device's group in it, and the device fd. */
static inline void vfio_type1_open(const char *bdf, int group, struct vfio_type1 *t)
{
	struct vfio_group_status status = { .argsz = sizeof(status) };
	char path[64];
	int ret;

	t->container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	if (t->container < 0)
		ktap_bail("open /dev/vfio/vfio: %s", strerror(errno));
	ret = ioctl(t->container, VFIO_GET_API_VERSION);
	if (ret != VFIO_API_VERSION)
		ktap_bail("VFIO_GET_API_VERSION: got %d, want %d", ret, VFIO_API_VERSION);
	if (ioctl(t->container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) <= 0)
		ktap_bail("VFIO_CHECK_EXTENSION(VFIO_TYPE1v2_IOMMU): not supported");

	snprintf(path, sizeof(path), "/dev/vfio/%d", group);
	t->group = vfio_open_retry(path, O_RDWR | O_CLOEXEC);
	if (t->group < 0)
		ktap_bail("open %s: %s", path, strerror(errno));
	if (ioctl(t->group, VFIO_GROUP_GET_STATUS, &status))
		ktap_bail("VFIO_GROUP_GET_STATUS: %s", strerror(errno));
	if (!(status.flags & VFIO_GROUP_FLAGS_VIABLE))
		ktap_bail("IOMMU group %d not viable (other devices bound to host drivers?)",
			  group);
	if (ioctl(t->group, VFIO_GROUP_SET_CONTAINER, &t->container))
		ktap_bail("VFIO_GROUP_SET_CONTAINER: %s", strerror(errno));
	if (ioctl(t->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU))
		ktap_bail("VFIO_SET_IOMMU(VFIO_TYPE1v2_IOMMU): %s", strerror(errno));
	t->device = ioctl(t->group, VFIO_GROUP_GET_DEVICE_FD, bdf);
	if (t->device < 0)
		ktap_bail("VFIO_GROUP_GET_DEVICE_FD(%s): %s", bdf, strerror(errno));
}

static inline void vfio_type1_close(struct vfio_type1 *t)
{
	close(t->device);
	close(t->group);
	close(t->container);
}

/* /dev/vfio/devices/vfioN of the device into path. */
static inline void vfio_find_cdev(const char *bdf, char *path, size_t len)
{
	char dir[PATH_MAX];
	struct dirent *de;
	DIR *d;

	pci_dev_path(dir, sizeof(dir), bdf, "vfio-dev");
	d = opendir(dir);
	if (!d)
		ktap_bail("no VFIO cdev for %s (%s: %s; kernel without CONFIG_VFIO_DEVICE_CDEV?)",
			  bdf, dir, strerror(errno));
	path[0] = '\0';
	while ((de = readdir(d)))
		if (!strncmp(de->d_name, "vfio", 4))
			snprintf(path, len, "/dev/vfio/devices/%s", de->d_name);
	closedir(d);
	if (!path[0])
		ktap_bail("no VFIO cdev for %s (%s is empty)", bdf, dir);
}

/* The cdev + iommufd way in: nothing attached yet. */
struct vfio_iommufd {
	int iommufd, device;
	uint32_t devid, ioas_id;
};

/* /dev/iommu, the device cdev bound to it, and a fresh IOAS. */
static inline void vfio_iommufd_open(const char *bdf, struct vfio_iommufd *f)
{
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind) };
	struct iommu_ioas_alloc alloc = { .size = sizeof(alloc) };
	char path[PATH_MAX];

	f->iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	if (f->iommufd < 0)
		ktap_bail("open /dev/iommu: %s", strerror(errno));
	vfio_find_cdev(bdf, path, sizeof(path));
	f->device = vfio_open_retry(path, O_RDWR | O_CLOEXEC);
	if (f->device < 0)
		ktap_bail("open %s: %s", path, strerror(errno));

	bind.iommufd = f->iommufd;
	if (ioctl(f->device, VFIO_DEVICE_BIND_IOMMUFD, &bind))
		ktap_bail("VFIO_DEVICE_BIND_IOMMUFD: %s", strerror(errno));
	f->devid = bind.out_devid;
	if (ioctl(f->iommufd, IOMMU_IOAS_ALLOC, &alloc))
		ktap_bail("IOMMU_IOAS_ALLOC: %s", strerror(errno));
	f->ioas_id = alloc.out_ioas_id;
}

/* Attach the cdev-bound device to an IOAS or HWPT; the ioctl's result
 * (-1 with errno), for callers that judge a refusal. */
static inline int vfio_attach_pt(int device, uint32_t pt_id)
{
	struct vfio_device_attach_iommufd_pt at = { .argsz = sizeof(at), .pt_id = pt_id };

	return ioctl(device, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at);
}

static inline void vfio_region_info(int device, uint32_t index, struct vfio_region_info *ri)
{
	memset(ri, 0, sizeof(*ri));
	ri->argsz = sizeof(*ri);
	ri->index = index;
	if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, ri))
		ktap_bail("VFIO_DEVICE_GET_REGION_INFO(%u): %s", index, strerror(errno));
}

/* Region index (called name in messages) of the device: its info into *ri
 * and its mmap. Bails if the region is smaller than min_size, or with
 * need_mmap if it cannot be mmapped; without need_mmap that gives NULL, and
 * the caller goes through pread/pwrite at ri->offset. */
static inline void *vfio_region_map(int device, uint32_t index, const char *name,
				    uint64_t min_size, bool need_mmap, struct vfio_region_info *ri)
{
	void *p = MAP_FAILED;

	vfio_region_info(device, index, ri);
	if (ri->size < min_size)
		ktap_bail("%s too small: 0x%llx bytes", name, (unsigned long long)ri->size);
	if (ri->flags & VFIO_REGION_INFO_FLAG_MMAP)
		p = mmap(NULL, ri->size, PROT_READ | PROT_WRITE, MAP_SHARED, device,
			 (off_t)ri->offset);
	if (p != MAP_FAILED)
		return p;
	if (!need_mmap)
		return NULL;
	if (!(ri->flags & VFIO_REGION_INFO_FLAG_MMAP))
		ktap_bail("%s not mmappable (flags 0x%x, size 0x%llx)", name, ri->flags,
			  (unsigned long long)ri->size);
	ktap_bail("mmap %s: %s", name, strerror(errno));
}

/* Memory decoding and bus mastering on, through the config region: vfio-pci
 * enables decoding on open but leaves bus mastering to the user, and
 * without it QEMU silently drops the device's DMA. */
static inline void vfio_pci_set_master(int device)
{
	struct vfio_region_info cfg;
	uint16_t cmd;

	vfio_region_info(device, VFIO_PCI_CONFIG_REGION_INDEX, &cfg);
	if (pread(device, &cmd, 2, (off_t)(cfg.offset + PCI_COMMAND)) != 2)
		ktap_bail("read PCI_COMMAND: %s", strerror(errno));
	cmd |= PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
	if (pwrite(device, &cmd, 2, (off_t)(cfg.offset + PCI_COMMAND)) != 2)
		ktap_bail("write PCI_COMMAND: %s", strerror(errno));
}
#endif
