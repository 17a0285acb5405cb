/* pvm-share-dma: the share-DMA invariant of pKVM, both ways (issue #17).
 *
 * The pKVM SMMUv3 series states it in its __pkvm_host_share_dma() patch:
 * host pages mapped in the IOMMU must not be donated to a guest (or to the
 * hypervisor), since the host could then use DMA to break confidentiality;
 * and a donated page must not become DMA-mapped. Here a VMM checks it from
 * userspace, with QEMU's edu device driven through vfio-pci, mapped either
 * with VFIO type1 (VFIO_IOMMU_MAP_DMA) or with iommufd (IOMMU_IOAS_MAP):
 *
 *   mapped then donated: the VMM maps a page of its guest RAM for the edu,
 *     then gives that RAM to a protected VM, whose first touch donates it.
 *     Either the donation is refused (KVM_RUN fails with an errno), or the
 *     old IOVA must no longer reach the page.
 *   donated then mapped: the pVM touches the page first (donated), then the
 *     VMM maps it for the edu. Either the map is refused, or the new IOVA
 *     must not reach the page.
 *
 * This file is #included by pkvm_vmm.c (one translation unit: it uses that
 * file's static VM, vCPU and KTAP helpers and its SECRET_PAGE / BOUNCE_*
 * constants). */

#define SHARE_IOVA_CTRL		0x100000ULL	/* control (not donated) page */
#define SHARE_IOVA_OLD		0x200000ULL	/* guest page, mapped before donation */
#define SHARE_IOVA_NEW		0x300000ULL	/* guest page, mapped after donation */

/* A vfio-pci edu and one way of mapping memory for it. */
struct share_dev {
	bool iommufd;
	struct vfio_type1 t;
	struct vfio_iommufd f;
	int device;
	struct edu_bar bar;
	char bdf[32];
};

static const char *share_via(const struct share_dev *d)
{
	return d->iommufd ? "iommufd" : "type1";
}

static void share_open(struct share_dev *d, const char *bdf)
{
	struct vfio_region_info ri;
	char drv[64];
	int group;

	edu_find(bdf, d->bdf, sizeof(d->bdf), NULL);
	ktap_diag("edu_bdf=%s", d->bdf);
	pci_link_name(d->bdf, "driver", drv, sizeof(drv));
	ktap_diag("edu_driver_before=%s", drv[0] ? drv : "none");
	vfio_bind_pci(d->bdf);
	group = vfio_iommu_group(d->bdf);
	ktap_diag("iommu_group=%d", group);
	if (d->iommufd) {
		vfio_iommufd_open(d->bdf, &d->f);
		if (vfio_attach_pt(d->f.device, d->f.ioas_id))
			ktap_bail("VFIO_DEVICE_ATTACH_IOMMUFD_PT(ioas %u): %s", d->f.ioas_id,
				  strerror(errno));
		d->device = d->f.device;
	} else {
		vfio_type1_open(d->bdf, group, &d->t);
		d->device = d->t.device;
	}
	memset(&d->bar, 0, sizeof(d->bar));
	d->bar.map = vfio_region_map(d->device, VFIO_PCI_BAR0_REGION_INDEX, "BAR0",
				     EDU_REGS_END, true, &ri);
	if (edu_read32(&d->bar, EDU_REG_ID) != EDU_ID)
		ktap_bail("edu %s: id register 0x%08x, expected 0x%08x", d->bdf,
			  edu_read32(&d->bar, EDU_REG_ID), EDU_ID);
	vfio_pci_set_master(d->device);
}

static void share_close(struct share_dev *d)
{
	munmap((void *)d->bar.map, EDU_BAR0_SIZE);
	if (d->iommufd) {
		close(d->f.device);
		close(d->f.iommufd);
	} else {
		vfio_type1_close(&d->t);
	}
}

/* Map one page at iova, read+write. 0 or -errno (the caller judges it). */
static int share_map(struct share_dev *d, void *va, uint64_t iova)
{
	int rc;

	if (d->iommufd) {
		struct iommu_ioas_map m = {
			.size = sizeof(m),
			.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
				 IOMMU_IOAS_MAP_WRITEABLE,
			.ioas_id = d->f.ioas_id,
			.user_va = (uintptr_t)va,
			.length = (uint64_t)page_size,
			.iova = iova,
		};

		rc = ioctl(d->f.iommufd, IOMMU_IOAS_MAP, &m);
	} else {
		struct vfio_iommu_type1_dma_map m = {
			.argsz = sizeof(m),
			.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
			.vaddr = (uintptr_t)va,
			.iova = iova,
			.size = (uint64_t)page_size,
		};

		rc = ioctl(d->t.container, VFIO_IOMMU_MAP_DMA, &m);
	}
	return rc ? -errno : 0;
}

static void share_unmap(struct share_dev *d, uint64_t iova)
{
	int rc;

	if (d->iommufd) {
		struct iommu_ioas_unmap u = {
			.size = sizeof(u), .ioas_id = d->f.ioas_id, .iova = iova,
			.length = (uint64_t)page_size,
		};

		rc = ioctl(d->f.iommufd, IOMMU_IOAS_UNMAP, &u);
	} else {
		struct vfio_iommu_type1_dma_unmap u = {
			.argsz = sizeof(u), .iova = iova, .size = (uint64_t)page_size,
		};

		rc = ioctl(d->t.container, VFIO_IOMMU_UNMAP_DMA, &u);
	}
	if (rc)
		ktap_bail("%s unmap iova=0x%llx: %s", share_via(d), (unsigned long long)iova,
			  strerror(errno));
}

static void share_xfer(struct share_dev *d, bool to_ram, uint64_t iova, size_t count)
{
	if (edu_dma(&d->bar, to_ram, iova, (uint32_t)count, NULL))
		ktap_bail("edu DMA (%s, iova 0x%llx): %s", to_ram ? "buffer to RAM" : "RAM to buffer",
			  (unsigned long long)iova, d->bar.err);
}

/* The host's own page, mapped at SHARE_IOVA_CTRL for the whole run. */
struct share_ctrl {
	uint64_t *va;
};

static void ctrl_fill(struct share_ctrl *c, uint64_t base)
{
	for (size_t i = 0; i < page_size / sizeof(*c->va); i++)
		c->va[i] = base | i;
}

static bool ctrl_holds(const struct share_ctrl *c, uint64_t base, size_t count)
{
	for (size_t i = 0; i < count / sizeof(*c->va); i++)
		if (c->va[i] != (base | i))
			return false;
	return true;
}

/* Positive control: through the same kind of mapping, the device reads a
 * page that is not donated (filler into its buffer) and writes it back
 * into the page (cleared in between). Both must land, or a blocked DMA
 * below proves nothing. It also leaves the filler in the device buffer. */
static bool share_control(struct share_dev *d, struct share_ctrl *c, size_t count, char *why,
			  size_t len)
{
	bool works;

	ctrl_fill(c, BOUNCE_FILLER);
	share_xfer(d, false, SHARE_IOVA_CTRL, count);
	memset(c->va, 0, page_size);
	share_xfer(d, true, SHARE_IOVA_CTRL, count);
	works = ctrl_holds(c, BOUNCE_FILLER, count);
	ktap_diag("%s_dma_control=%s", share_via(d), works ? "works" : "blocked");
	if (!works)
		return fail(why, len, "positive control failed: the edu's %s DMA to a page that is not"
			    " donated did not land, so a blocked DMA below would prove nothing",
			    share_via(d));
	return true;
}

/* Device read of the guest page through iova: copy it into the control
 * page through the device buffer. Any word of the guest pattern there is
 * the secret. */
static bool share_check_read(struct share_dev *d, struct share_ctrl *c, uint64_t iova,
			     size_t count, const char *key, const char *what, char *why, size_t len)
{
	size_t words = count / sizeof(*c->va), secret = 0;

	ctrl_fill(c, BOUNCE_FILLER);
	share_xfer(d, false, iova, count);
	share_xfer(d, true, SHARE_IOVA_CTRL, count);
	for (size_t i = 0; i < words; i++)
		secret += c->va[i] == pattern(SECRET_PAGE);
	ktap_diag("%s_read_secret_words=%zu/%zu", key, secret, words);
	if (secret)
		return fail(why, len, "%s: device read returned the guest's secret", what);
	return true;
}

/* Device write into the guest page through iova; the guest, the only one
 * who may look, checks its page. A guest that cannot run any more is not
 * a result: bail out. */
static bool share_check_write(struct share_dev *d, struct share_ctrl *c, struct vm *vm,
			      uint64_t iova, size_t count, const char *key, const char *what,
			      char *why, size_t len)
{
	uint64_t bad;
	int rc;

	ctrl_fill(c, BOUNCE_DMA_DATA);
	share_xfer(d, false, SHARE_IOVA_CTRL, count);
	share_xfer(d, true, iova, count);
	rc = vcpu_exec(vm, 0, OP_VERIFY, SECRET_PAGE, 1, &bad);
	if (rc)
		ktap_bail("%s: guest could not check its page after the device write: %s", key,
			  err_buf);
	ktap_diag("%s_guest_bad_words=%" PRIu64, key, bad);
	if (bad)
		return fail(why, len, "%s: device write landed in protected memory", what);
	return true;
}

/* A refused donation must be an errno from KVM_RUN: a guest exception,
 * a stray exit or a hang is no refusal. */
static void share_clean_refusal(int rc, const char *key)
{
	if (rc == -EPROTO || rc == -ETIMEDOUT)
		ktap_bail("%s: guest run failed, not a clean refusal: %s", key, err_buf);
}

/* Mapped, then donated. Tests n and n+1 (read, write). */
static void share_mapped_then_donated(struct share_dev *d, struct share_ctrl *c, size_t count,
				      const char *const *names)
{
	const char *what = "host DMA mapping survived donation";
	char why[320] = "";
	struct vm vm;
	int rc;

	if (vm_create(&vm, true, 1))
		ktap_bail("%s", err_buf);
	rc = share_map(d, data_page(&vm, SECRET_PAGE), SHARE_IOVA_OLD);
	if (rc)
		ktap_bail("%s map of a page not yet donated (iova 0x%llx): %s", share_via(d),
			  SHARE_IOVA_OLD, strerror(-rc));
	if (set_memslot(&vm, 0, ram_ipa, vm.mem_size) || vm_add_vcpu(&vm))
		ktap_bail("%s", err_buf);
	/* The guest's first touch of the data page donates it. */
	rc = guest_fill_verify(&vm, 0, SECRET_PAGE, 1);
	if (rc) {
		share_clean_refusal(rc, "mapped_then_donated");
		ktap_diag("mapped_then_donated_run=%s", errname(-rc));
		ktap_diag("mapped_then_donated_error=%s", err_buf);
		ktap_result(1, 0, names[0], "");
		ktap_result(1, 0, names[1], "");
	} else {
		ktap_diag("mapped_then_donated_run=ok");
		ktap_result(share_check_read(d, c, SHARE_IOVA_OLD, count, "mapped_then_donated",
					     what, why, sizeof(why)), 0, names[0], why);
		ktap_result(share_check_write(d, c, &vm, SHARE_IOVA_OLD, count,
					      "mapped_then_donated", what, why, sizeof(why)),
			    0, names[1], why);
	}
	share_unmap(d, SHARE_IOVA_OLD);
	vm_destroy(&vm, false);
}

/* Donated, then mapped. Tests n and n+1 (read, write). */
static void share_donated_then_mapped(struct share_dev *d, struct share_ctrl *c, size_t count,
				      const char *const *names)
{
	const char *what = "host DMA mapping of a donated page";
	char why[320] = "";
	struct vm vm;
	int rc;

	if (vm_setup(&vm, true, 1, 1))
		ktap_bail("%s", err_buf);
	if (guest_fill_verify(&vm, 0, SECRET_PAGE, 1))
		ktap_bail("donated_then_mapped: guest run failed: %s", err_buf);
	rc = share_map(d, data_page(&vm, SECRET_PAGE), SHARE_IOVA_NEW);
	ktap_diag("donated_then_mapped_map=%s", rc ? errname(-rc) : "ok");
	if (rc) {
		ktap_result(1, 0, names[0], "");
		ktap_result(1, 0, names[1], "");
	} else {
		ktap_result(share_check_read(d, c, SHARE_IOVA_NEW, count, "donated_then_mapped",
					     what, why, sizeof(why)), 0, names[0], why);
		ktap_result(share_check_write(d, c, &vm, SHARE_IOVA_NEW, count,
					      "donated_then_mapped", what, why, sizeof(why)),
			    0, names[1], why);
		share_unmap(d, SHARE_IOVA_NEW);
	}
	vm_destroy(&vm, false);
}

/* pkvm-vmm pvm-share-dma --via type1|iommufd [--bdf BDF] */
static int cmd_pvm_share_dma(bool iommufd, const char *bdf)
{
	static const char *const type1_names[] = {
		"type1 DMA to a page not donated (positive control)",
		"type1 mapped then donated: device read through the old IOVA",
		"type1 mapped then donated: device write through the old IOVA",
		"type1 donated then mapped: device read through the new IOVA",
		"type1 donated then mapped: device write through the new IOVA",
	};
	static const char *const iommufd_names[] = {
		"iommufd DMA to a page not donated (positive control)",
		"iommufd mapped then donated: device read through the old IOVA",
		"iommufd mapped then donated: device write through the old IOVA",
		"iommufd donated then mapped: device read through the new IOVA",
		"iommufd donated then mapped: device write through the new IOVA",
	};
	const char *const *names = iommufd ? iommufd_names : type1_names;
	size_t count = page_size < EDU_BUF_SIZE ? page_size : EDU_BUF_SIZE;
	struct share_dev d = { .iommufd = iommufd };
	struct share_ctrl c;
	char why[320] = "";
	int rc;

	ktap_header(5);
	if (!require_protected(names, 5))
		return ktap_exit_code();
	c.va = mmap(NULL, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (c.va == MAP_FAILED)
		ktap_bail("mmap control page: %s", strerror(errno));
	memset(c.va, 0, page_size);
	share_open(&d, bdf);
	ktap_diag("dma_count=%zu", count);
	rc = share_map(&d, c.va, SHARE_IOVA_CTRL);
	if (rc)
		ktap_bail("%s map of the control page: %s", share_via(&d), strerror(-rc));
	ktap_result(share_control(&d, &c, count, why, sizeof(why)), 0, names[0], why);
	share_mapped_then_donated(&d, &c, count, names + 1);
	share_donated_then_mapped(&d, &c, count, names + 3);
	share_unmap(&d, SHARE_IOVA_CTRL);
	share_close(&d);
	munmap(c.va, page_size);
	return ktap_exit_code();
}
