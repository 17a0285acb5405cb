/*
 * edu-dma fuzz: a random (or given) sequence of map / unmap / device-write /
 * device-read operations in a small IOVA window, each printed with what the
 * kernel answered and what the DMA observably did. The helper judges nothing:
 * the harness's model (harness/scenario/dma_model.py) replays the printed
 * sequence and predicts every outcome. Included by edu_dma.c (it uses that
 * file's backend, pattern and DMA functions).
 *
 * Memory: a pool of FZ_POOL_PAGES pages filled with the pattern of
 * fuzz_pool_key; mappings map pool pages (aliases allowed) at IOVAs in
 * [FZ_WIN, FZ_WIN + FZ_WIN_PAGES pages). Two read-write scratch pages below
 * the window load the device buffer (before a device write) and read it back
 * (after a device read); they are never part of the sequence.
 *
 * Output, one KTAP diagnostic per operation (K = index in the sequence):
 *   # op K map iova=0x.. len=0x.. pool=0x.. perm=r|w|rw ret=0|-errno
 *   # op K unmap iova=0x.. len=0x.. ret=0|-errno unmapped=0x..
 *   # op K dw iova=0x.. len=N data=0xKEY landed=OFF+LEN:HASH,...|none
 *       device -> RAM: the device buffer holds pattern(KEY); landed lists
 *       the runs of pool bytes that changed (pool offset, length, FNV-1a 32
 *       of the new bytes)
 *   # op K dr iova=0x.. len=N got=HASH,...
 *       RAM -> device: FNV-1a 32 of what the device buffer then held, one
 *       hash per piece of [iova, iova+len) split at IOVA page boundaries
 *   ... err=<why> when a DMA itself did not complete.
 * Replay: --ops "map:IOVA:LEN:POOL:PERM;unmap:IOVA:LEN;dw:IOVA:LEN:KEY;dr:IOVA:LEN"
 * (numbers in C notation) runs exactly that sequence.
 */
#ifndef EDU_DMA_FUZZ_H
#define EDU_DMA_FUZZ_H

#define FZ_WIN 0x20000000ull
#define FZ_WIN_PAGES 48
#define FZ_POOL_PAGES 32
#define FZ_SCRATCH (FZ_WIN - 0x100000ull) /* in; out one page above */
#define FZ_MAX_OPS 512
#define FZ_MAX_MAPS 64
#define FZ_BLOCKED_CAP 24 /* bytes a generated DMA may expect to be blocked */

enum fz_kind { FZ_MAP, FZ_UNMAP, FZ_DW, FZ_DR };

struct fz_op {
	enum fz_kind kind;
	uint64_t iova, len, pool, key;
	unsigned int perm;
};

/* The generator's own picture of what it asked for (not an oracle: it only
 * steers the sequence towards interesting places and short blocked DMAs). */
struct fz_map {
	uint64_t iova, len;
	unsigned int perm;
	bool live;
	uint64_t hot; /* last byte a DMA touched in it (0: none): the IOTLB may hold it */
};

#define FZ_GONE 4 /* recently unmapped ranges, for DMA after unmap */

static struct fz_state {
	struct fz_map maps[FZ_MAX_MAPS];
	int nr_maps;
	struct fz_map gone[FZ_GONE];
	int nr_gone;
	uint64_t rng;
} fz;

static uint64_t fz_rand(uint64_t n)
{
	return n ? splitmix64(&fz.rng) % n : 0;
}

static uint32_t fnv1a(const uint8_t *p, size_t n)
{
	uint32_t h = 0x811c9dc5u;

	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x01000193u;
	return h;
}

static const char *fz_perm_name(unsigned int perm)
{
	return perm == PERM_RW ? "rw" : perm == PERM_READ ? "r" : "w";
}

static int fz_live(int *idx, int max)
{
	int n = 0;

	for (int i = 0; i < fz.nr_maps && n < max; i++)
		if (fz.maps[i].live)
			idx[n++] = i;
	return n;
}

/* What the generator believes a device access of iova needs and has. */
static bool fz_allowed(uint64_t iova, unsigned int need)
{
	for (int i = 0; i < fz.nr_maps; i++) {
		const struct fz_map *m = &fz.maps[i];

		if (m->live && iova >= m->iova && iova < m->iova + m->len)
			return (m->perm & need) == need;
	}
	return false;
}

static void fz_note_map(const struct fz_op *o, int ret)
{
	if (ret || fz.nr_maps == FZ_MAX_MAPS)
		return;
	fz.maps[fz.nr_maps++] = (struct fz_map){ o->iova, o->len, o->perm, true, 0 };
}

static void fz_note_dma(const struct fz_op *o)
{
	for (int i = 0; i < fz.nr_maps; i++) {
		struct fz_map *m = &fz.maps[i];
		uint64_t last = o->iova + o->len - 1;

		if (m->live && o->iova < m->iova + m->len && m->iova <= last)
			m->hot = last < m->iova + m->len ? last : m->iova + m->len - 1;
	}
}

static void fz_note_unmap(const struct fz_op *o, int ret)
{
	if (ret)
		return;
	for (int i = 0; i < fz.nr_maps; i++) {
		struct fz_map *m = &fz.maps[i];

		if (m->live && m->iova >= o->iova && m->iova + m->len <= o->iova + o->len) {
			m->live = false;
			fz.gone[fz.nr_gone++ % FZ_GONE] = *m;
		}
	}
	/* compact */
	int n = 0;

	for (int i = 0; i < fz.nr_maps; i++)
		if (fz.maps[i].live)
			fz.maps[n++] = fz.maps[i];
	fz.nr_maps = n;
}

static void fz_gen_map(struct fz_op *o, size_t pg)
{
	uint64_t pages = 1 + fz_rand(6);
	static const unsigned int perms[] = { PERM_READ, PERM_WRITE, PERM_RW, PERM_RW };

	*o = (struct fz_op){ .kind = FZ_MAP, .len = pages * pg, .perm = perms[fz_rand(4)] };
	o->pool = fz_rand(FZ_POOL_PAGES - pages + 1) * pg;
	/* Mostly a free spot; sometimes wherever (an overlap must be refused). */
	for (int tries = 0; tries < 8; tries++) {
		bool clash = false;

		o->iova = FZ_WIN + fz_rand(FZ_WIN_PAGES - pages + 1) * pg;
		for (int i = 0; i < fz.nr_maps; i++)
			if (o->iova < fz.maps[i].iova + fz.maps[i].len &&
			    fz.maps[i].iova < o->iova + o->len)
				clash = true;
		if (!clash || fz_rand(8) == 0)
			break;
	}
}

static void fz_gen_unmap(struct fz_op *o, const struct fz_map *m, size_t pg)
{
	uint64_t r = fz_rand(10), pages = m->len / pg;

	*o = (struct fz_op){ .kind = FZ_UNMAP, .iova = m->iova, .len = m->len };
	if (r < 2 && pages > 1) { /* the first pages only */
		o->len = (1 + fz_rand(pages - 1)) * pg;
	} else if (r < 3 && pages > 1) { /* the last pages only */
		uint64_t k = 1 + fz_rand(pages - 1);

		o->iova = m->iova + m->len - k * pg;
		o->len = k * pg;
	} else if (r < 5) { /* a span around it (holes, maybe neighbours) */
		uint64_t below = fz_rand(4) * pg, above = fz_rand(4) * pg;

		if (m->iova - below < FZ_WIN)
			below = 0;
		o->iova = m->iova - below;
		o->len = below + m->len + above;
	}
}

/* A device access around mapping m (or anywhere in the window). */
static void fz_gen_dma(struct fz_op *o, const struct fz_map *m, size_t pg)
{
	bool to_ram = fz_rand(2);
	unsigned int need = to_ram ? PERM_WRITE : PERM_READ;
	uint64_t start, len, r = fz_rand(10), blocked = 0;

	if (!m) {
		start = FZ_WIN + fz_rand(FZ_WIN_PAGES * pg);
		len = 1 + fz_rand(16);
	} else if (r < 2 && fz.nr_gone) {
		/* where a mapping was: where a DMA last went (a stale IOTLB
		 * entry would be there), else its last page, mostly */
		const struct fz_map *g = &fz.gone[fz_rand(min_sz((size_t)fz.nr_gone, FZ_GONE))];

		if (g->hot && fz_rand(4))
			start = g->hot - fz_rand(min_sz(g->hot - g->iova + 1, 8));
		else if (fz_rand(4))
			start = g->iova + g->len - pg + fz_rand(pg);
		else
			start = g->iova + fz_rand(g->len);
		len = 1 + fz_rand(16);
	} else if (r < 5) { /* inside */
		uint64_t off = fz_rand(m->len);

		start = m->iova + off;
		len = 1 + fz_rand(min_sz(m->len - off, EDU_BUF_SIZE));
	} else if (r < 7) { /* across its end */
		uint64_t a = 1 + fz_rand(64);

		start = m->iova + m->len - a;
		len = a + 1 + fz_rand(16);
	} else if (r < 8) { /* across its start */
		uint64_t b = 1 + fz_rand(16);

		start = m->iova - b;
		len = b + 1 + fz_rand(64);
	} else { /* just outside */
		start = fz_rand(2) ? m->iova + m->len + fz_rand(64) : m->iova - 1 - fz_rand(32);
		len = 1 + fz_rand(16);
	}
	if (len > EDU_BUF_SIZE)
		len = EDU_BUF_SIZE;
	/* Blocked DMA is reported per beat, rate-limited: keep it short. */
	for (uint64_t i = 0; i < len; i++) {
		if (!fz_allowed(start + i, need) && ++blocked > FZ_BLOCKED_CAP) {
			len = i ? i : 1;
			break;
		}
	}
	*o = (struct fz_op){ .kind = to_ram ? FZ_DW : FZ_DR, .iova = start, .len = len };
	if (to_ram)
		o->key = splitmix64(&fz.rng);
}

/* The next generated operation(s): a remap is an unmap and a map. */
static int fz_generate(struct fz_op *ops, int max, size_t pg)
{
	int live[FZ_MAX_MAPS], nl = fz_live(live, FZ_MAX_MAPS);
	const struct fz_map *m = nl ? &fz.maps[live[fz_rand(nl)]] : NULL;
	uint64_t r = fz_rand(100);

	/* Unmaps and remaps prefer a mapping a DMA went through. */
	if (m && !m->hot && r >= 15 && r < 37)
		for (int i = 0; i < nl; i++)
			if (fz.maps[live[i]].hot)
				m = &fz.maps[live[i]];

	if (!m || (nl < 3 && r < 30) || r < 15) {
		fz_gen_map(&ops[0], pg);
		return 1;
	}
	if (r < 30) {
		fz_gen_unmap(&ops[0], m, pg);
		return 1;
	}
	if (r < 37 && max >= 2) { /* remap: same place, new permission and pages */
		ops[0] = (struct fz_op){ .kind = FZ_UNMAP, .iova = m->iova, .len = m->len };
		fz_gen_map(&ops[1], pg);
		ops[1].iova = m->iova;
		return 2;
	}
	fz_gen_dma(&ops[0], m, pg);
	return 1;
}

/* --ops LIST */
static int fz_parse(const char *s, struct fz_op *ops, int max)
{
	char *copy = strdup(s), *save = NULL, *tok;
	int n = 0;

	if (!copy)
		ktap_bail("out of memory");
	for (tok = strtok_r(copy, ";", &save); tok; tok = strtok_r(NULL, ";", &save)) {
		char kind[8], perm[4] = "";
		unsigned long long a = 0, b = 0, c = 0;
		struct fz_op *o = &ops[n];

		if (n == max)
			usage_error("--ops: more than %d operations", max);
		memset(o, 0, sizeof(*o));
		if (sscanf(tok, "%7[a-z]:%lli:%lli", kind, &a, &b) != 3)
			usage_error("--ops: bad operation '%s'", tok);
		o->iova = a;
		o->len = b;
		if (!strcmp(kind, "map")) {
			if (sscanf(tok, "%*[a-z]:%*i:%*i:%lli:%3[rw]", &c, perm) != 2)
				usage_error("--ops: bad map '%s'", tok);
			o->kind = FZ_MAP;
			o->pool = c;
			o->perm = (strchr(perm, 'r') ? PERM_READ : 0) | (strchr(perm, 'w') ? PERM_WRITE : 0);
		} else if (!strcmp(kind, "unmap")) {
			o->kind = FZ_UNMAP;
		} else if (!strcmp(kind, "dw") || !strcmp(kind, "dr")) {
			o->kind = kind[1] == 'w' ? FZ_DW : FZ_DR;
			if (o->kind == FZ_DW && sscanf(tok, "%*[a-z]:%*i:%*i:%lli", &c) == 1)
				o->key = c;
			if (!o->len || o->len > EDU_BUF_SIZE)
				usage_error("--ops: DMA length not in 1..%u '%s'", EDU_BUF_SIZE, tok);
		} else {
			usage_error("--ops: unknown operation '%s'", kind);
		}
		n++;
	}
	free(copy);
	return n;
}

static double fz_uptime(void)
{
	FILE *f = fopen("/proc/uptime", "r");
	double up = -1;

	if (f) {
		if (fscanf(f, "%lf", &up) != 1)
			up = -1;
		fclose(f);
	}
	return up;
}

struct fz_run {
	struct edu *e;
	struct dmabuf pool, in, out;
	uint8_t *shadow;
	size_t pool_len;
	int dma_errors;
	char first_error[300];
};

static void fz_dma_error(struct fz_run *r, int k)
{
	if (!r->dma_errors++)
		snprintf(r->first_error, sizeof(r->first_error), "op %d: %s", k, r->e->err);
}

static void fz_exec(struct fz_run *r, int k, const struct fz_op *o)
{
	struct edu *e = r->e;
	size_t pg = e->page;
	char line[2048];
	size_t n = 0;
	int ret;

	switch (o->kind) {
	case FZ_MAP:
		ret = 0;
		if (o->pool + o->len > r->pool_len) {
			ret = -EINVAL; /* never reaches the kernel: outside our pool */
		} else if (iommu_map_perm(e, o->iova, r->pool.va + o->pool, o->len, o->perm)) {
			ret = -errno;
		}
		ktap_diag("op %d map iova=0x%" PRIx64 " len=0x%" PRIx64 " pool=0x%" PRIx64
			  " perm=%s ret=%d", k, o->iova, o->len, o->pool, fz_perm_name(o->perm), ret);
		fz_note_map(o, ret);
		break;
	case FZ_UNMAP: {
		uint64_t done = 0;

		if (e->backend == BACKEND_TYPE1) {
			struct vfio_iommu_type1_dma_unmap u = {
				.argsz = sizeof(u), .iova = o->iova, .size = o->len,
			};
			ret = ioctl(e->container_fd, VFIO_IOMMU_UNMAP_DMA, &u) ? -errno : 0;
			done = ret ? 0 : u.size;
		} else {
			struct iommu_ioas_unmap u = {
				.size = sizeof(u), .ioas_id = e->ioas_id, .iova = o->iova,
				.length = o->len,
			};
			ret = ioctl(e->iommufd, IOMMU_IOAS_UNMAP, &u) ? -errno : 0;
			done = ret ? 0 : u.length;
		}
		ktap_diag("op %d unmap iova=0x%" PRIx64 " len=0x%" PRIx64 " ret=%d unmapped=0x%" PRIx64,
			  k, o->iova, o->len, ret, done);
		fz_note_unmap(o, ret);
		break;
	}
	case FZ_DW: {
		size_t i = 0;
		bool any = false;

		fz_note_dma(o);
		n = (size_t)snprintf(line, sizeof(line), "op %d dw iova=0x%" PRIx64 " len=%" PRIu64
				     " data=0x%" PRIx64 " landed=", k, o->iova, o->len, o->key);
		fill_pattern(r->in.va, pg, o->key);
		if (dma_to_device(e, r->in.iova, EDU_BUF_SIZE) ||
		    dma_from_device(e, o->iova, (uint32_t)o->len)) {
			fz_dma_error(r, k);
			n += (size_t)snprintf(line + n, sizeof(line) - n, "none err=%s", e->err);
			ktap_diag("%s", line);
			break;
		}
		io_barrier();
		while (i < r->pool_len) {
			size_t j;

			if (r->pool.va[i] == r->shadow[i]) {
				i++;
				continue;
			}
			for (j = i; j < r->pool_len && r->pool.va[j] != r->shadow[j]; j++)
				;
			if (n < sizeof(line) - 64)
				n += (size_t)snprintf(line + n, sizeof(line) - n, "%s0x%zx+%zu:%08x",
						      any ? "," : "", i, j - i,
						      fnv1a(r->pool.va + i, j - i));
			any = true;
			i = j;
		}
		if (!any)
			n += (size_t)snprintf(line + n, sizeof(line) - n, "none");
		memcpy(r->shadow, r->pool.va, r->pool_len);
		ktap_diag("%s", line);
		break;
	}
	case FZ_DR: {
		uint64_t a = o->iova, end = o->iova + o->len;

		fz_note_dma(o);
		n = (size_t)snprintf(line, sizeof(line), "op %d dr iova=0x%" PRIx64 " len=%" PRIu64
				     " got=", k, o->iova, o->len);
		memset(r->out.va, 0, pg);
		if (dma_to_device(e, o->iova, (uint32_t)o->len) ||
		    dma_from_device(e, r->out.iova, (uint32_t)o->len)) {
			fz_dma_error(r, k);
			n += (size_t)snprintf(line + n, sizeof(line) - n, "none err=%s", e->err);
			ktap_diag("%s", line);
			break;
		}
		io_barrier();
		while (a < end) {
			uint64_t b = min_sz(align_down(a, pg) + pg, end);

			n += (size_t)snprintf(line + n, sizeof(line) - n, "%s%08x",
					      a == o->iova ? "" : ",",
					      fnv1a(r->out.va + (a - o->iova), b - a));
			a = b;
		}
		if (memcmp(r->pool.va, r->shadow, r->pool_len)) {
			n += (size_t)snprintf(line + n, sizeof(line) - n, " pool_changed=1");
			memcpy(r->shadow, r->pool.va, r->pool_len);
		}
		ktap_diag("%s", line);
		break;
	}
	}
}

static struct fz_op fz_ops[FZ_MAX_OPS];

static void cmd_fuzz(struct edu *e)
{
	size_t pg = e->page;
	uint64_t pool_key = pattern_key(TAG_FUZZ, FZ_WIN, FZ_POOL_PAGES);
	struct fz_run r = { .e = e };
	int nr = 0;
	char why[400];

	if (!iova_valid(e, FZ_SCRATCH, 2 * pg) || !iova_valid(e, FZ_WIN, FZ_WIN_PAGES * pg))
		ktap_bail("fuzz window 0x%llx+0x%zx is outside the valid IOVA ranges",
			  (unsigned long long)FZ_SCRATCH, (size_t)(FZ_WIN - FZ_SCRATCH) + FZ_WIN_PAGES * pg);
	r.pool_len = FZ_POOL_PAGES * pg;
	buf_alloc(e, &r.pool, r.pool_len);
	buf_alloc(e, &r.in, pg);
	buf_alloc(e, &r.out, pg);
	r.shadow = malloc(r.pool_len);
	if (!r.shadow)
		ktap_bail("out of memory");
	fill_pattern(r.pool.va, r.pool_len, pool_key);
	memcpy(r.shadow, r.pool.va, r.pool_len);
	buf_map_or_bail(e, &r.in, FZ_SCRATCH);
	buf_map_or_bail(e, &r.out, FZ_SCRATCH + pg);

	fz.rng = opt.seed ^ 0xf022f022f022f022ull;
	if (opt.fuzz_ops)
		nr = fz_parse(opt.fuzz_ops, fz_ops, FZ_MAX_OPS);
	ktap_diag("fuzz_pool_key=0x%" PRIx64, pool_key);
	ktap_diag("fuzz_pool_len=0x%zx", r.pool_len);
	ktap_diag("fuzz_window=0x%llx+0x%zx", (unsigned long long)FZ_WIN, FZ_WIN_PAGES * pg);
	ktap_diag("fuzz_mode=%s", opt.fuzz_ops ? "replay" : "random");
	ktap_diag("fuzz_ops=%d", opt.fuzz_ops ? nr : (int)opt.fuzz_length);
	ktap_diag("fuzz_uptime=%.3f", fz_uptime());
	if (opt.fuzz_ops) {
		for (int k = 0; k < nr; k++)
			fz_exec(&r, k, &fz_ops[k]);
	} else {
		/* Generated step by step: the generator steers by what the
		 * kernel answered so far. */
		for (int k = 0; k < (int)opt.fuzz_length;) {
			int n = fz_generate(fz_ops, 2, pg);

			for (int i = 0; i < n && k < (int)opt.fuzz_length; i++, k++)
				fz_exec(&r, k, &fz_ops[i]);
		}
	}
	ktap_diag("fuzz_end_uptime=%.3f", fz_uptime());
	snprintf(why, sizeof(why), "%d DMAs did not complete, first %s", r.dma_errors,
		 r.first_error);
	ktap_result(!r.dma_errors, 0, "fuzz sequence ran", why);
}
#endif
