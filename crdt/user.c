/*
 * user.c — one user's replicated state: its records, the merge rules, the local
 * changes, and the Merkle summary.
 *
 * Storage is built for a million messages per user in little memory:
 *  - Records live in fixed-size 80-byte `struct slot`s inside sorted arrays, one
 *    array per bucket; the buckets are the nodes of level B of the 16-ary key trie,
 *    with B growing with the record count (a small user has one bucket).  Lookups
 *    are a binary search in one bucket; foreach over a prefix is a range scan.
 *  - Folder and keyword names are interned per user; a slot holds ids.  So are the
 *    node ids of the slots' stamps (a cluster has few nodes): a slot holds a 16-bit
 *    index.  Size and INTERNALDATE take 32 bits.  A value that does not fit (size
 *    >= 4 GiB, a date outside 1970..2106, the 65,536th distinct node) is kept whole
 *    beside the slot (a MESSAGE's in its `ext` array, another type's in its unused
 *    union room), so every record reads back exactly as it was merged: the leaf
 *    hashes, hence convergence with other nodes, do not depend on this layout.
 *  - Registers are sparse: a register written with the message's own creation
 *    stamp (flags given at delivery) costs one bit; any other written register is an
 *    entry in a small per-message `ext` array, which the slot reaches by a 32-bit
 *    index into a per-user pool; never-written registers cost nothing.
 *  - The Merkle cache holds hash and count of every node of levels 0..B; deeper
 *    nodes are computed by hashing the few records of one bucket.  Leaf hashes are
 *    not stored: a change hashes the record before and after and XORs the difference
 *    into the B+1 cached nodes on its path.
 * Every change, remote or local, is reduced to "join this record into the state"
 * (merge_rec) and "replace what is under this key" (store), so local changes follow
 * exactly the rules remote records do.
 */
#include "crdt/crdt.h"
#include "crdt/uid.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>

#define MAXB 5          /* deepest bucket level: 16^5 buckets */
#define GROW_AT 32      /* grow B when the average bucket holds more records */
#define ID_UID 6        /* ext register ids: 0..5 flags, 6 uid, 7 uid need, 8..10 wide */
#define ID_NEED 7       /* the need is a max register, kept in the entry's stamp.t */
#define ID_SIZE 8       /* wide values (WIDE32 / NODE_WIDE in the slot), in stamp.t */
#define ID_IDATE 9
#define ID_NODE 10
#define ID_KW0 11       /* keyword k is id ID_KW0 + k */
#define FAT_UID (1u << 6)
#define WIDE32 UINT32_MAX /* size / idate field: the value is in the ext array */
#define NODE_WIDE 0xffffu /* node field: the node id is kept outside the node table */
#define NODES_MAX 0xffffu /* node table indices 0..NODES_MAX - 1 */

struct ext_ent {
	mm_hlc stamp;
	uint32_t id;
	uint8_t value;
};

struct ext {
	uint32_t n;
	struct ext_ent e[];
};

/* One record, 80 bytes (a million of them are most of a large user's memory).
 * The stamp is t plus an index into the user's node table (a cluster has few
 * nodes); size and INTERNALDATE take 32 bits.  What does not fit (the 65,536th
 * distinct node, a size of 4 GiB or more, a date before 1970 or after 2106) is kept
 * whole: for a MESSAGE as an entry of its ext array, for the other types in the
 * unused room of the union.  mat() rebuilds the exact record either way, so the
 * leaf hashes do not depend on this layout. */
struct slot {
	uint8_t key[MM_KEY_LEN];
	uint64_t t;    /* stamp.t: MESSAGE created, EXPUNGED/HORIZON stamp, FOLDER exists */
	uint16_t node; /* its stamp.node: index in u->nodes, or NODE_WIDE */
	uint8_t tv;    /* bits 0-5: MESSAGE values of fat flags, FOLDER bit 0 exists,
	                * bit 1 subscribed; bits 6-7: type - 1 */
	uint8_t fat;   /* MESSAGE: registers written at `created` (bit f, FAT_UID) */
	union {        /* 4-byte fields only, so the union packs right after `fat` */
		struct {
			uint8_t body[MM_ID_LEN];
			uint32_t size;   /* WIDE32: in ext (ID_SIZE) */
			uint32_t idate;  /* internaldate in [0, WIDE32); WIDE32: in ext (ID_IDATE) */
			uint32_t ext;    /* index in u->xp, 0 = no ext array */
			uint32_t folder; /* folder name id */
			uint32_t uid;
		} m;
		struct {
			uint8_t wnode[8]; /* exists stamp's node when NODE_WIDE */
			uint8_t sub[16];  /* subscribed stamp: t, node */
			uint32_t name;
			uint32_t uv;      /* explicit UIDVALIDITY, 0 = the one the exists stamp gives */
		} f;
		struct {
			uint8_t wnode[8]; /* EXPUNGED, HORIZON: the stamp's node when NODE_WIDE */
		} o;
	} u;
};

_Static_assert(sizeof(struct slot) == 80, "struct slot grew: the memory budget per message counts on 80 bytes");

struct bucket {
	struct slot *s;
	uint32_t n, cap;
};

/* Node ids of the stamps slots hold, interned per user (never shrinks: at most
 * NODES_MAX entries, plus a few bytes each). */
struct nodes {
	uint64_t *id;  /* index -> node id */
	uint32_t n, cap;
	uint32_t *tab; /* index + 1, 0 = empty */
	uint32_t tcap; /* power of two */
};

/* Ext arrays, reached from a slot by a 32-bit index: an entry is an array in use
 * or, when free, the index of the next free entry.  Entry 0 is never used. */
union xent {
	struct ext *x;
	uint32_t next;
};

struct xpool {
	union xent *e;
	uint32_t n, cap;
	uint32_t free; /* first free entry, 0 = none */
};

struct intern {
	char **names;
	uint32_t n, cap;
	uint32_t *tab; /* id + 1, 0 = empty */
	uint32_t tcap; /* power of two */
};

enum { SCR_OLD, SCR_NEW, SCR_EFF, SCR_FE, SCR_TREE, SCR_N };

/* Mutable scratch reached from const functions (read-only queries materialise
 * records into it). */
struct scratch {
	struct mm_kwreg *kw[SCR_N];
	size_t cap;
	unsigned fe_depth;
	/* Records handed out by mm_user_get, in two generations: when the current one
	 * holds VIEW_GEN_BYTES the other is emptied and becomes current, so a long
	 * read-only scan (no change in between) reuses memory instead of growing, and a
	 * record stays valid for at least VIEW_GEN_BYTES of records handed out after it. */
	struct mm_arena view[2];
	size_t view_bytes;    /* bytes handed out of view[view_cur] */
	unsigned view_cur;
	uint64_t view_ver;    /* user version when the views were last emptied */
};

#define VIEW_GEN_BYTES (256u * 1024)

struct mm_user {
	char *name;
	unsigned B;
	struct bucket *bk;
	uint8_t (*lh[MAXB + 1])[MM_HASH_LEN];
	uint32_t *lc[MAXB + 1];
	size_t count;
	struct intern folders, kws;
	struct nodes nodes;
	struct xpool xp;
	uint32_t *live; /* live messages per folder id */
	uint32_t live_cap;
	struct scratch *sc;
	uint8_t hkey[MM_KEY_LEN];
	uint64_t version;
	size_t ext_bytes;
};

uint64_t mm_user_version(const struct mm_user *u)
{
	return u->version;
}

static bool stamp_zero(mm_hlc s)
{
	return s.t == 0 && s.node == 0;
}

static bool stamp_eq(mm_hlc a, mm_hlc b)
{
	return a.t == b.t && a.node == b.node;
}

/* ---- interning ------------------------------------------------------------------ */

static uint32_t strhash(const char *s)
{
	uint32_t h = 2166136261u;
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 16777619u;
	return h;
}

static int intern_find(const struct intern *in, const char *s, uint32_t *id_r)
{
	if (!in->tcap)
		return -ENOENT;
	for (uint32_t i = strhash(s) & (in->tcap - 1);; i = (i + 1) & (in->tcap - 1)) {
		uint32_t v = in->tab[i];
		if (!v)
			return -ENOENT;
		if (!strcmp(in->names[v - 1], s)) {
			*id_r = v - 1;
			return 0;
		}
	}
}

static int intern_add(struct intern *in, const char *s, uint32_t *id_r)
{
	if (!intern_find(in, s, id_r))
		return 0;
	if ((in->n + 1) * 2 > in->tcap) {
		uint32_t nt = in->tcap ? in->tcap * 2 : 16;
		uint32_t *tab = calloc(nt, sizeof *tab);
		if (!tab)
			return -ENOMEM;
		for (uint32_t j = 0; j < in->n; j++) {
			uint32_t i = strhash(in->names[j]) & (nt - 1);
			while (tab[i])
				i = (i + 1) & (nt - 1);
			tab[i] = j + 1;
		}
		free(in->tab);
		in->tab = tab;
		in->tcap = nt;
	}
	if (in->n == in->cap) {
		uint32_t nc = in->cap ? in->cap * 2 : 8;
		char **nn = realloc(in->names, nc * sizeof *nn);
		if (!nn)
			return -ENOMEM;
		in->names = nn;
		in->cap = nc;
	}
	char *copy = strdup(s);
	if (!copy)
		return -ENOMEM;
	uint32_t i = strhash(s) & (in->tcap - 1);
	while (in->tab[i])
		i = (i + 1) & (in->tcap - 1);
	in->names[in->n] = copy;
	in->tab[i] = in->n + 1;
	*id_r = in->n++;
	return 0;
}

static void intern_free(struct intern *in)
{
	for (uint32_t i = 0; i < in->n; i++)
		free(in->names[i]);
	free(in->names);
	free(in->tab);
	memset(in, 0, sizeof *in);
}

/* ---- node ids ----------------------------------------------------------------------- */

static uint32_t nodehash(uint64_t node)
{
	return (uint32_t)((node * 0x9e3779b97f4a7c15ull) >> 32);
}

/* Index of node in the table, added if new; NODE_WIDE once the table is full (the
 * caller keeps the id elsewhere).  0 or -ENOMEM. */
static int node_intern(struct nodes *t, uint64_t node, uint16_t *idx_r)
{
	if (t->tcap) {
		for (uint32_t i = nodehash(node) & (t->tcap - 1);; i = (i + 1) & (t->tcap - 1)) {
			uint32_t v = t->tab[i];
			if (!v)
				break;
			if (t->id[v - 1] == node) {
				*idx_r = (uint16_t)(v - 1);
				return 0;
			}
		}
	}
	if (t->n >= NODES_MAX) {
		*idx_r = NODE_WIDE;
		return 0;
	}
	if ((t->n + 1) * 2 > t->tcap) {
		uint32_t nt = t->tcap ? t->tcap * 2 : 16;
		uint32_t *tab = calloc(nt, sizeof *tab);
		if (!tab)
			return -ENOMEM;
		for (uint32_t j = 0; j < t->n; j++) {
			uint32_t i = nodehash(t->id[j]) & (nt - 1);
			while (tab[i])
				i = (i + 1) & (nt - 1);
			tab[i] = j + 1;
		}
		free(t->tab);
		t->tab = tab;
		t->tcap = nt;
	}
	if (t->n == t->cap) {
		uint32_t nc = t->cap ? t->cap * 2 : 8;
		uint64_t *id = realloc(t->id, nc * sizeof *id);
		if (!id)
			return -ENOMEM;
		t->id = id;
		t->cap = nc;
	}
	uint32_t i = nodehash(node) & (t->tcap - 1);
	while (t->tab[i])
		i = (i + 1) & (t->tcap - 1);
	t->id[t->n] = node;
	t->tab[i] = t->n + 1;
	*idx_r = (uint16_t)t->n++;
	return 0;
}

static void nodes_free(struct nodes *t)
{
	free(t->id);
	free(t->tab);
	memset(t, 0, sizeof *t);
}

/* ---- ext arrays --------------------------------------------------------------------- */

/* Takes x into the pool; *idx_r its index (never 0).  0 or -ENOMEM (x not taken). */
static int xpool_put(struct xpool *p, struct ext *x, uint32_t *idx_r)
{
	uint32_t i = p->free;
	if (i) {
		p->free = p->e[i].next;
	} else {
		if (p->n == p->cap) {
			if (p->cap >= UINT32_MAX / 2)
				return -ENOMEM;
			uint32_t nc = p->cap ? p->cap * 2 : 16;
			union xent *e = realloc(p->e, nc * sizeof *e);
			if (!e)
				return -ENOMEM;
			p->e = e;
			p->cap = nc;
			if (!p->n)
				p->n = 1; /* entry 0 means "none" */
		}
		i = p->n++;
	}
	p->e[i].x = x;
	*idx_r = i;
	return 0;
}

static const struct ext *xpool_get(const struct xpool *p, uint32_t i)
{
	return i ? p->e[i].x : NULL;
}

/* Frees the array at i (i != 0) and puts the entry on the free list. */
static void xpool_del(struct xpool *p, uint32_t i)
{
	free(p->e[i].x);
	p->e[i].next = p->free;
	p->free = i;
}

/* ---- slot fields ---------------------------------------------------------------------- */

static enum mm_rec_type slot_type(const struct slot *s)
{
	return (enum mm_rec_type)((s->tv >> 6) + 1);
}

static unsigned slot_val(const struct slot *s)
{
	return s->tv & 0x3f;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, sizeof v);
	return v;
}

static void put64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, sizeof v);
}

/* int64 <-> its two's complement bits, without implementation-defined conversions */
static uint64_t i64_bits(int64_t v)
{
	return (uint64_t)v;
}

static int64_t i64_of(uint64_t x)
{
	return x <= (uint64_t)INT64_MAX ? (int64_t)x : (int64_t)(x - (uint64_t)INT64_MAX - 1) + INT64_MIN;
}

static const struct ext *slot_ext(const struct mm_user *u, const struct slot *s)
{
	return slot_type(s) == MM_REC_MESSAGE ? xpool_get(&u->xp, s->u.m.ext) : NULL;
}

/* A wide value of a MESSAGE slot (ID_SIZE, ID_IDATE, ID_NODE); 0 if absent. */
static uint64_t ext_wide(const struct mm_user *u, const struct slot *s, uint32_t id)
{
	const struct ext *x = slot_ext(u, s);
	for (uint32_t i = 0; x && i < x->n; i++)
		if (x->e[i].id == id)
			return x->e[i].stamp.t;
	return 0;
}

/* The slot's stamp (MESSAGE created, EXPUNGED/HORIZON stamp, FOLDER exists). */
static mm_hlc slot_st(const struct mm_user *u, const struct slot *s)
{
	mm_hlc st = { s->t, 0 };
	if (s->node != NODE_WIDE)
		st.node = u->nodes.id[s->node];
	else if (slot_type(s) == MM_REC_MESSAGE)
		st.node = ext_wide(u, s, ID_NODE);
	else if (slot_type(s) == MM_REC_FOLDER)
		st.node = get64(s->u.f.wnode);
	else
		st.node = get64(s->u.o.wnode);
	return st;
}

/* ---- keys and tree positions ------------------------------------------------------ */

static unsigned nibble(const uint8_t *key, unsigned i)
{
	return (key[i / 2] >> ((i & 1) ? 0 : 4)) & 0xf;
}

/* Index of the level-l node holding key (l <= MAXB, so 20 bits of the key). */
static uint32_t node_index(const uint8_t *key, unsigned l)
{
	uint32_t top = (uint32_t)key[0] << 16 | (uint32_t)key[1] << 8 | key[2];
	return l ? top >> (24 - 4 * l) : 0;
}

/* Copies the first depth nibbles of prefix into a full key, zero-padded. */
static void prefix_key(const uint8_t *prefix, unsigned depth, uint8_t pk[MM_KEY_LEN])
{
	memset(pk, 0, MM_KEY_LEN);
	if (depth > MM_MAX_DEPTH)
		depth = MM_MAX_DEPTH;
	if (!prefix || !depth)
		return;
	memcpy(pk, prefix, depth / 2);
	if (depth & 1)
		pk[depth / 2] = prefix[depth / 2] & 0xf0;
}

static bool prefix_match(const uint8_t *key, const uint8_t *pk, unsigned depth)
{
	if (memcmp(key, pk, depth / 2))
		return false;
	return !(depth & 1) || (key[depth / 2] & 0xf0) == pk[depth / 2];
}

static struct bucket *bucket_of(const struct mm_user *u, const uint8_t *key)
{
	return &u->bk[node_index(key, u->B)];
}

/* Lower bound of key in b: first index whose key >= key. */
static uint32_t lower_bound(const struct bucket *b, const uint8_t *key)
{
	uint32_t lo = 0, hi = b->n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (memcmp(b->s[mid].key, key, MM_KEY_LEN) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static struct slot *find(const struct mm_user *u, const uint8_t *key)
{
	struct bucket *b = bucket_of(u, key);
	uint32_t i = lower_bound(b, key);
	return i < b->n && !memcmp(b->s[i].key, key, MM_KEY_LEN) ? &b->s[i] : NULL;
}

/* ---- slots <-> records -------------------------------------------------------------- */

static struct mm_reg slot_reg(const struct mm_user *u, const struct slot *s, uint32_t id)
{
	if (id <= ID_UID && (s->fat & (1u << id)))
		return (struct mm_reg){ .value = id < ID_UID ? (slot_val(s) >> id) & 1 : 0, .stamp = slot_st(u, s) };
	const struct ext *x = slot_ext(u, s);
	for (uint32_t i = 0; x && i < x->n; i++)
		if (x->e[i].id == id)
			return (struct mm_reg){ .value = x->e[i].value, .stamp = x->e[i].stamp };
	return (struct mm_reg){ 0 };
}

static size_t slot_nkw(const struct mm_user *u, const struct slot *s)
{
	size_t n = 0;
	const struct ext *x = slot_ext(u, s);
	for (uint32_t i = 0; x && i < x->n; i++)
		n += x->e[i].id >= ID_KW0;
	return n;
}

/* Materialises a slot.  Keywords go to kw (room for the message's keywords: the
 * scratch buffers are kept as large as the largest keyword set stored); kw NULL
 * leaves them out (n_keywords 0). */
static void mat(const struct mm_user *u, const struct slot *s, struct mm_rec *r, struct mm_kwreg *kw)
{
	mm_hlc st = slot_st(u, s);
	unsigned val = slot_val(s);
	memset(r, 0, sizeof *r);
	r->type = slot_type(s);
	memcpy(r->key, s->key, MM_KEY_LEN);
	switch (r->type) {
	case MM_REC_MESSAGE: {
		memcpy(r->msg.body, s->u.m.body, MM_ID_LEN);
		r->msg.folder = u->folders.names[s->u.m.folder];
		r->msg.size = s->u.m.size;
		r->msg.internaldate = s->u.m.idate;
		r->msg.created = st;
		r->msg.uid_value = s->u.m.uid;
		for (unsigned f = 0; f < MM_FLAG_COUNT; f++)
			if (s->fat & (1u << f))
				r->msg.flags[f] = (struct mm_reg){ (val >> f) & 1, st };
		if (s->fat & FAT_UID)
			r->msg.uid.stamp = st;
		const struct ext *x = slot_ext(u, s);
		size_t nk = 0;
		for (uint32_t i = 0; x && i < x->n; i++) {
			const struct ext_ent *e = &x->e[i];
			struct mm_reg reg = { e->value, e->stamp };
			if (e->id < ID_UID)
				r->msg.flags[e->id] = reg;
			else if (e->id == ID_UID)
				r->msg.uid.stamp = e->stamp;
			else if (e->id == ID_NEED)
				r->msg.uid_need = (uint32_t)e->stamp.t;
			else if (e->id == ID_SIZE)
				r->msg.size = e->stamp.t;
			else if (e->id == ID_IDATE)
				r->msg.internaldate = i64_of(e->stamp.t);
			else if (e->id >= ID_KW0 && kw)
				kw[nk++] = (struct mm_kwreg){ u->kws.names[e->id - ID_KW0], reg };
		}
		r->msg.n_keywords = nk;
		r->msg.keywords = nk ? kw : NULL;
		break;
	}
	case MM_REC_EXPUNGED:
		r->tomb.stamp = st;
		break;
	case MM_REC_FOLDER: {
		mm_hlc sub = { get64(s->u.f.sub), get64(s->u.f.sub + 8) };
		r->folder.name = u->folders.names[s->u.f.name];
		if (!stamp_zero(st))
			r->folder.exists = (struct mm_reg){ val & 1, st };
		if (!stamp_zero(sub))
			r->folder.subscribed = (struct mm_reg){ (val >> 1) & 1, sub };
		r->folder.uidvalidity = s->u.f.uv ? s->u.f.uv : mm_folder_uidvalidity(st);
		break;
	}
	case MM_REC_HORIZON:
		r->horizon.stamp = st;
		break;
	}
}

static int ensure_kw(struct mm_user *u, size_t n)
{
	struct scratch *sc = u->sc;
	if (n <= sc->cap)
		return 0;
	size_t nc = sc->cap ? sc->cap : 8;
	while (nc < n)
		nc *= 2;
	for (int i = 0; i < SCR_N; i++) {
		struct mm_kwreg *p = realloc(sc->kw[i], nc * sizeof *p);
		if (!p)
			return -ENOMEM;
		sc->kw[i] = p;
	}
	sc->cap = nc;
	return 0;
}

/* Sets the slot's stamp (t and node).  wnode: where a non-MESSAGE slot keeps a node
 * the table cannot index; a MESSAGE's goes to its ext array (*wide_r set). */
static int slot_set_st(struct mm_user *u, struct slot *s, mm_hlc st, uint8_t *wnode, bool *wide_r)
{
	int rc = node_intern(&u->nodes, st.node, &s->node);
	if (rc)
		return rc;
	s->t = st.t;
	*wide_r = s->node == NODE_WIDE;
	if (*wide_r && wnode)
		put64(wnode, st.node);
	return 0;
}

/* Builds the slot for r (validated): interns names and node ids, allocates the ext
 * array. */
static int build_slot(struct mm_user *u, const struct mm_rec *r, struct slot *s)
{
	int rc;
	bool wide;
	unsigned val = 0;
	memset(s, 0, sizeof *s);
	memcpy(s->key, r->key, MM_KEY_LEN);
	switch (r->type) {
	case MM_REC_MESSAGE: {
		struct ext_ent e[ID_KW0];
		uint32_t ne = 0;
		mm_hlc st = r->msg.created;
		if ((rc = slot_set_st(u, s, st, NULL, &wide)))
			return rc;
		if (wide)
			e[ne++] = (struct ext_ent){ { st.node, 0 }, ID_NODE, 0 };
		memcpy(s->u.m.body, r->msg.body, MM_ID_LEN);
		if (r->msg.size < WIDE32) {
			s->u.m.size = (uint32_t)r->msg.size;
		} else {
			s->u.m.size = WIDE32;
			e[ne++] = (struct ext_ent){ { r->msg.size, 0 }, ID_SIZE, 0 };
		}
		if (r->msg.internaldate >= 0 && r->msg.internaldate < WIDE32) {
			s->u.m.idate = (uint32_t)r->msg.internaldate;
		} else {
			s->u.m.idate = WIDE32;
			e[ne++] = (struct ext_ent){ { i64_bits(r->msg.internaldate), 0 }, ID_IDATE, 0 };
		}
		s->u.m.uid = r->msg.uid_value;
		if ((rc = intern_add(&u->folders, r->msg.folder, &s->u.m.folder)))
			return rc;
		if (s->u.m.folder >= u->live_cap) {
			uint32_t nc = u->live_cap ? u->live_cap * 2 : 8;
			while (nc <= s->u.m.folder)
				nc *= 2;
			uint32_t *l = realloc(u->live, nc * sizeof *l);
			if (!l)
				return -ENOMEM;
			memset(l + u->live_cap, 0, (nc - u->live_cap) * sizeof *l);
			u->live = l;
			u->live_cap = nc;
		}
		for (uint32_t f = 0; f < MM_FLAG_COUNT; f++) {
			const struct mm_reg *g = &r->msg.flags[f];
			if (stamp_zero(g->stamp))
				continue;
			if (stamp_eq(g->stamp, st)) {
				s->fat |= (uint8_t)(1u << f);
				val |= (unsigned)g->value << f;
			} else {
				e[ne++] = (struct ext_ent){ g->stamp, f, g->value };
			}
		}
		if (!stamp_zero(r->msg.uid.stamp)) {
			if (stamp_eq(r->msg.uid.stamp, st))
				s->fat |= FAT_UID;
			else
				e[ne++] = (struct ext_ent){ r->msg.uid.stamp, ID_UID, 0 };
		}
		if (r->msg.uid_need)
			e[ne++] = (struct ext_ent){ { r->msg.uid_need, 0 }, ID_NEED, 0 };
		size_t n = ne + r->msg.n_keywords;
		if (n) {
			if ((rc = ensure_kw(u, r->msg.n_keywords)))
				return rc;
			struct ext *x = malloc(sizeof *x + n * sizeof x->e[0]);
			if (!x)
				return -ENOMEM;
			memcpy(x->e, e, ne * sizeof e[0]);
			for (size_t i = 0; i < r->msg.n_keywords; i++) {
				uint32_t id;
				if ((rc = intern_add(&u->kws, r->msg.keywords[i].name, &id))) {
					free(x);
					return rc;
				}
				x->e[ne + i] = (struct ext_ent){ r->msg.keywords[i].reg.stamp, ID_KW0 + id,
				                                 r->msg.keywords[i].reg.value };
			}
			x->n = (uint32_t)n;
			if ((rc = xpool_put(&u->xp, x, &s->u.m.ext))) {
				free(x);
				return rc;
			}
		}
		break;
	}
	case MM_REC_EXPUNGED:
		if ((rc = slot_set_st(u, s, r->tomb.stamp, s->u.o.wnode, &wide)))
			return rc;
		break;
	case MM_REC_FOLDER:
		if ((rc = intern_add(&u->folders, r->folder.name, &s->u.f.name)))
			return rc;
		if ((rc = slot_set_st(u, s, r->folder.exists.stamp, s->u.f.wnode, &wide)))
			return rc;
		put64(s->u.f.sub, r->folder.subscribed.stamp.t);
		put64(s->u.f.sub + 8, r->folder.subscribed.stamp.node);
		if (r->folder.uidvalidity && r->folder.uidvalidity != mm_folder_uidvalidity(r->folder.exists.stamp))
			s->u.f.uv = r->folder.uidvalidity;
		val = r->folder.exists.value | (unsigned)r->folder.subscribed.value << 1;
		break;
	case MM_REC_HORIZON:
		if ((rc = slot_set_st(u, s, r->horizon.stamp, s->u.o.wnode, &wide)))
			return rc;
		break;
	default:
		return -EINVAL;
	}
	s->tv = (uint8_t)(((unsigned)r->type - 1) << 6 | (val & 0x3f));
	return 0;
}

static size_t ext_size(const struct mm_user *u, const struct slot *s)
{
	/* payload plus malloc's per-chunk overhead, for mm_user_mem */
	const struct ext *x = slot_ext(u, s);
	return x ? 16 + sizeof(struct ext) + x->n * sizeof(struct ext_ent) : 0;
}

static void free_slot(struct mm_user *u, struct slot *s)
{
	if (slot_type(s) == MM_REC_MESSAGE && s->u.m.ext) {
		xpool_del(&u->xp, s->u.m.ext);
		s->u.m.ext = 0;
	}
}

/* ---- Merkle cache and bucket growth ---------------------------------------------------- */

static void xor_into(uint8_t *a, const uint8_t *b)
{
	for (int i = 0; i < MM_HASH_LEN; i++)
		a[i] ^= b[i];
}

static void slot_hash(const struct mm_user *u, const struct slot *s, uint8_t h[MM_HASH_LEN])
{
	struct mm_rec r;
	mat(u, s, &r, u->sc->kw[SCR_TREE]);
	mm_rec_hash(&r, h);
}

/* Splits every bucket into 16 (B -> B+1) and fills the new level of the cache.
 * On allocation failure nothing changes (the user just stays shallower). */
static void grow(struct mm_user *u)
{
	unsigned nb = u->B + 1;
	size_t n = (size_t)1 << (4 * nb);
	struct bucket *bk = calloc(n, sizeof *bk);
	uint8_t(*lh)[MM_HASH_LEN] = calloc(n, sizeof *lh);
	uint32_t *lc = calloc(n, sizeof *lc);
	if (!bk || !lh || !lc)
		goto fail;
	for (size_t i = 0; i < ((size_t)1 << (4 * u->B)); i++) {
		struct bucket *ob = &u->bk[i];
		uint32_t j = 0;
		while (j < ob->n) {
			unsigned nib = nibble(ob->s[j].key, u->B);
			uint32_t k = j;
			while (k < ob->n && nibble(ob->s[k].key, u->B) == nib)
				k++;
			struct bucket *b = &bk[i * 16 + nib];
			b->s = malloc((k - j) * sizeof *b->s);
			if (!b->s)
				goto fail;
			memcpy(b->s, ob->s + j, (k - j) * sizeof *b->s);
			b->n = b->cap = k - j;
			j = k;
		}
	}
	for (size_t i = 0; i < n; i++) {
		for (uint32_t j = 0; j < bk[i].n; j++) {
			uint8_t h[MM_HASH_LEN];
			slot_hash(u, &bk[i].s[j], h);
			xor_into(lh[i], h);
		}
		lc[i] = bk[i].n;
	}
	for (size_t i = 0; i < ((size_t)1 << (4 * u->B)); i++)
		free(u->bk[i].s);
	free(u->bk);
	u->bk = bk;
	u->lh[nb] = lh;
	u->lc[nb] = lc;
	u->B = nb;
	return;
fail:
	if (bk)
		for (size_t i = 0; i < n; i++)
			free(bk[i].s);
	free(bk);
	free(lh);
	free(lc);
}

/* Replaces what is under key: old (the current record, NULL if none) becomes nw
 * (NULL: remove).  Keeps the cache, counts and folder live counts in step.  The
 * only function that writes slots; fails (-ENOMEM) without changing anything. */
static int store(struct mm_user *u, const uint8_t *key, const struct mm_rec *old, const struct mm_rec *nw)
{
	uint8_t d[MM_HASH_LEN] = { 0 }, h[MM_HASH_LEN];
	struct slot ns;
	int rc;
	if (nw && (rc = build_slot(u, nw, &ns)))
		return rc;
	struct bucket *b = bucket_of(u, key);
	uint32_t i = lower_bound(b, key);
	bool found = i < b->n && !memcmp(b->s[i].key, key, MM_KEY_LEN);
	if (!found && nw && b->n == b->cap) {
		uint32_t nc = b->cap + b->cap / 8 + 2;
		struct slot *p = realloc(b->s, nc * sizeof *p);
		if (!p) {
			free_slot(u, &ns);
			return -ENOMEM;
		}
		b->s = p;
		b->cap = nc;
	}
	if (old) {
		mm_rec_hash(old, h);
		xor_into(d, h);
	}
	if (nw) {
		mm_rec_hash(nw, h);
		xor_into(d, h);
	}
	int dc = 0;
	if (found) {
		struct slot *s = &b->s[i];
		if (slot_type(s) == MM_REC_MESSAGE)
			u->live[s->u.m.folder]--;
		u->ext_bytes -= ext_size(u, s);
		free_slot(u, s);
		if (nw) {
			*s = ns;
		} else {
			memmove(s, s + 1, (b->n - i - 1) * sizeof *s);
			b->n--;
			u->count--;
			dc = -1;
		}
	} else if (nw) {
		memmove(&b->s[i + 1], &b->s[i], (b->n - i) * sizeof *b->s);
		b->s[i] = ns;
		b->n++;
		u->count++;
		dc = 1;
	}
	if (nw) {
		if (slot_type(&ns) == MM_REC_MESSAGE)
			u->live[ns.u.m.folder]++;
		u->ext_bytes += ext_size(u, &ns);
	}
	for (unsigned l = 0; l <= u->B; l++) {
		uint32_t x = node_index(key, l);
		xor_into(u->lh[l][x], d);
		u->lc[l][x] = (uint32_t)((int64_t)u->lc[l][x] + dc);
	}
	u->version++;
	while (u->B < MAXB && u->count > ((size_t)GROW_AT << (4 * u->B))) {
		unsigned before = u->B;
		grow(u);
		if (u->B == before)
			break;
	}
	return 0;
}

/* ---- user lifetime ------------------------------------------------------------------ */

struct mm_user *mm_user_new(const char *name)
{
	struct mm_user *u = calloc(1, sizeof *u);
	if (!u)
		return NULL;
	u->name = strdup(name ? name : "");
	u->sc = calloc(1, sizeof *u->sc);
	u->bk = calloc(1, sizeof *u->bk);
	u->lh[0] = calloc(1, sizeof *u->lh[0]);
	u->lc[0] = calloc(1, sizeof *u->lc[0]);
	if (!u->name || !u->sc || !u->bk || !u->lh[0] || !u->lc[0] || ensure_kw(u, 8)) {
		mm_user_free(&u);
		return NULL;
	}
	mm_arena_init(&u->sc->view[0]);
	mm_arena_init(&u->sc->view[1]);
	mm_key_horizon(u->hkey);
	return u;
}

void mm_user_free(struct mm_user **up)
{
	struct mm_user *u = up ? *up : NULL;
	if (!u)
		return;
	if (u->bk) {
		for (size_t i = 0; i < ((size_t)1 << (4 * u->B)); i++) {
			for (uint32_t j = 0; j < u->bk[i].n; j++)
				free_slot(u, &u->bk[i].s[j]);
			free(u->bk[i].s);
		}
	}
	free(u->bk);
	for (unsigned l = 0; l <= MAXB; l++) {
		free(u->lh[l]);
		free(u->lc[l]);
	}
	intern_free(&u->folders);
	intern_free(&u->kws);
	nodes_free(&u->nodes);
	free(u->xp.e); /* every array in it was freed with its slot */
	free(u->live);
	if (u->sc) {
		for (int i = 0; i < SCR_N; i++)
			free(u->sc->kw[i]);
		mm_arena_free(&u->sc->view[0]);
		mm_arena_free(&u->sc->view[1]);
		free(u->sc);
	}
	free(u->name);
	free(u);
	*up = NULL;
}

const char *mm_user_name(const struct mm_user *u)
{
	return u->name;
}

size_t mm_user_count(const struct mm_user *u)
{
	return u->count;
}

size_t mm_user_mem(const struct mm_user *u)
{
	size_t m = sizeof *u + sizeof *u->sc + strlen(u->name) + 1;
	size_t nb = (size_t)1 << (4 * u->B);
	m += nb * sizeof *u->bk;
	for (size_t i = 0; i < nb; i++)
		m += u->bk[i].cap * sizeof(struct slot) + (u->bk[i].s ? 16 : 0);
	for (unsigned l = 0; l <= u->B; l++)
		m += ((size_t)1 << (4 * l)) * (MM_HASH_LEN + sizeof(uint32_t));
	m += u->ext_bytes + u->xp.cap * sizeof(union xent);
	m += u->nodes.cap * sizeof(uint64_t) + u->nodes.tcap * sizeof(uint32_t);
	m += (u->folders.cap + u->kws.cap) * sizeof(char *) + (u->folders.tcap + u->kws.tcap) * sizeof(uint32_t);
	for (uint32_t i = 0; i < u->folders.n; i++)
		m += strlen(u->folders.names[i]) + 1;
	for (uint32_t i = 0; i < u->kws.n; i++)
		m += strlen(u->kws.names[i]) + 1;
	m += u->live_cap * sizeof(uint32_t) + u->sc->cap * SCR_N * sizeof(struct mm_kwreg);
	return m;
}

/* ---- merge rules ----------------------------------------------------------------------- */

static void emit(mm_effect_fn *eff, void *arg, const struct mm_user *u, enum mm_effect e, const struct mm_rec *r)
{
	if (eff)
		eff(arg, u->name, e, r);
}

/* UID register: later stamp wins; same stamp (only after a bug) the larger UID.
 * The need beside it is a max register. */
static void uid_join(struct mm_rec *m, const struct mm_rec *a, const struct mm_rec *b)
{
	int c = mm_hlc_cmp(a->msg.uid.stamp, b->msg.uid.stamp);
	const struct mm_rec *w = c > 0 ? a : c < 0 ? b : (a->msg.uid_value >= b->msg.uid_value ? a : b);
	m->msg.uid = w->msg.uid;
	m->msg.uid_value = w->msg.uid_value;
	m->msg.uid_need = a->msg.uid_need > b->msg.uid_need ? a->msg.uid_need : b->msg.uid_need;
}

/* Order of the immutable part of a message: decides, identically everywhere, which
 * instance wins if two records with one key disagree on what should never change. */
static int immut_cmp(const struct mm_rec *a, const struct mm_rec *b)
{
	int c = memcmp(a->msg.body, b->msg.body, MM_ID_LEN);
	if (c)
		return c;
	if ((c = strcmp(a->msg.folder, b->msg.folder)))
		return c;
	if (a->msg.size != b->msg.size)
		return a->msg.size < b->msg.size ? -1 : 1;
	if (a->msg.internaldate != b->msg.internaldate)
		return a->msg.internaldate < b->msg.internaldate ? -1 : 1;
	return 0;
}

/* m = join of two MESSAGE records with one key; keywords written to kw, which has
 * room for both keyword lists. */
static void msg_join(struct mm_rec *m, const struct mm_rec *a, const struct mm_rec *b, struct mm_kwreg *kw)
{
	*m = immut_cmp(a, b) >= 0 ? *a : *b;
	for (int f = 0; f < MM_FLAG_COUNT; f++)
		m->msg.flags[f] = mm_reg_join(a->msg.flags[f], b->msg.flags[f]);
	uid_join(m, a, b);
	size_t i = 0, j = 0, n = 0;
	while (i < a->msg.n_keywords || j < b->msg.n_keywords) {
		int c = i == a->msg.n_keywords ? 1 : j == b->msg.n_keywords ? -1
		      : strcmp(a->msg.keywords[i].name, b->msg.keywords[j].name);
		if (c < 0) {
			kw[n++] = a->msg.keywords[i++];
		} else if (c > 0) {
			kw[n++] = b->msg.keywords[j++];
		} else {
			kw[n] = a->msg.keywords[i];
			kw[n++].reg = mm_reg_join(a->msg.keywords[i++].reg, b->msg.keywords[j++].reg);
		}
	}
	m->msg.n_keywords = n;
	m->msg.keywords = n ? kw : NULL;
}

static uint8_t kw_value(const struct mm_rec *r, const char *name)
{
	for (size_t i = 0; i < r->msg.n_keywords; i++)
		if (!strcmp(r->msg.keywords[i].name, name))
			return r->msg.keywords[i].reg.value;
	return 0;
}

static bool flags_differ(const struct mm_rec *a, const struct mm_rec *b)
{
	for (int f = 0; f < MM_FLAG_COUNT; f++)
		if (a->msg.flags[f].value != b->msg.flags[f].value)
			return true;
	for (size_t i = 0; i < a->msg.n_keywords; i++)
		if (a->msg.keywords[i].reg.value != kw_value(b, a->msg.keywords[i].name))
			return true;
	for (size_t i = 0; i < b->msg.n_keywords; i++)
		if (b->msg.keywords[i].reg.value != kw_value(a, b->msg.keywords[i].name))
			return true;
	return false;
}

static bool folder_visible_change(const struct mm_rec *o, const struct mm_rec *n)
{
	uint8_t oe = o ? o->folder.exists.value : 0, os = o ? o->folder.subscribed.value : 0;
	if (oe != n->folder.exists.value || os != n->folder.subscribed.value)
		return true;
	/* a new exists stamp is a new UIDVALIDITY, also for a deleted folder that
	 * deliveries keep visible */
	return o && !stamp_eq(o->folder.exists.stamp, n->folder.exists.stamp);
}

static bool horizon_get(const struct mm_user *u, mm_hlc *h)
{
	const struct slot *s = find(u, u->hkey);
	if (!s || slot_type(s) != MM_REC_HORIZON)
		return false;
	*h = slot_st(u, s);
	return true;
}

/* Drops every tombstone stamped before h. Returns the number dropped. */
static int drop_tombs(struct mm_user *u, mm_hlc h, mm_effect_fn *eff, void *arg)
{
	int dropped = 0;
	for (size_t bi = 0; bi < ((size_t)1 << (4 * u->B)); bi++) {
		struct bucket *b = &u->bk[bi];
		uint32_t i = 0;
		while (i < b->n) {
			struct slot *s = &b->s[i];
			if (slot_type(s) != MM_REC_EXPUNGED || mm_hlc_cmp(slot_st(u, s), h) >= 0) {
				i++;
				continue;
			}
			struct mm_rec r;
			uint8_t key[MM_KEY_LEN];
			mat(u, s, &r, NULL);
			memcpy(key, s->key, MM_KEY_LEN);
			store(u, key, &r, NULL); /* removal cannot fail */
			emit(eff, arg, u, MM_EFF_GC, &r);
			dropped++;
		}
	}
	return dropped;
}

/* Effects of a record appearing where there was nothing (or something of a lower
 * type that was invisible). */
/* The UIDVALIDITY a FOLDER record gives: an explicit one travels with the exists
 * register that carried it; 0 means the one its stamp gives. */
static uint32_t folder_uv(const struct mm_rec *r)
{
	return r->folder.uidvalidity ? r->folder.uidvalidity : mm_folder_uidvalidity(r->folder.exists.stamp);
}

static void effects_new(struct mm_user *u, const struct mm_rec *r, mm_effect_fn *eff, void *arg)
{
	if (r->type == MM_REC_MESSAGE)
		emit(eff, arg, u, MM_EFF_MSG_NEW, r);
	else if (r->type == MM_REC_EXPUNGED)
		emit(eff, arg, u, MM_EFF_TOMB_NEW, r);
	else if (r->type == MM_REC_FOLDER && folder_visible_change(NULL, r))
		emit(eff, arg, u, MM_EFF_FOLDER, r);
}

/* Joins a validated record into the state: the one place the merge rules live.
 * Type order MESSAGE < EXPUNGED < FOLDER < HORIZON: a record of a larger type
 * replaces one of a smaller type under the same key (a tombstone beats its
 * message; the others only meet under one key by hash collision or forgery). */
static int merge_rec(struct mm_user *u, const struct mm_rec *in, mm_effect_fn *eff, void *arg)
{
	struct slot *s = find(u, in->key);
	mm_hlc hz;
	bool has_hz = horizon_get(u, &hz);
	bool stale_tomb = in->type == MM_REC_EXPUNGED && has_hz && mm_hlc_cmp(in->tomb.stamp, hz) < 0;
	struct mm_rec old, m;
	int rc;

	if (!s) {
		if (stale_tomb)
			return 0; /* already collected here */
		struct mm_rec nw = *in;
		if (nw.type == MM_REC_FOLDER)
			nw.folder.uidvalidity = folder_uv(&nw);
		if ((rc = store(u, in->key, NULL, &nw)))
			return rc;
		effects_new(u, &nw, eff, arg);
		if (nw.type == MM_REC_HORIZON)
			drop_tombs(u, nw.horizon.stamp, eff, arg);
		return 1;
	}
	if (slot_type(s) == MM_REC_MESSAGE && in->type == MM_REC_MESSAGE) {
		size_t need = slot_nkw(u, s) + in->msg.n_keywords;
		if ((rc = ensure_kw(u, need)))
			return rc;
	}
	mat(u, s, &old, u->sc->kw[SCR_OLD]);
	if (in->type < old.type)
		return 0;
	if (in->type > old.type) {
		if (stale_tomb) {
			/* A tombstone older than the horizon still kills its message, but is
			 * not kept (every replica past the horizon has dropped it). */
			if ((rc = store(u, in->key, &old, NULL)))
				return rc;
			emit(eff, arg, u, MM_EFF_MSG_EXPUNGED, &old);
			return 1;
		}
		struct mm_rec nw = *in;
		if (nw.type == MM_REC_FOLDER)
			nw.folder.uidvalidity = folder_uv(&nw);
		if ((rc = store(u, in->key, &old, &nw)))
			return rc;
		if (old.type == MM_REC_MESSAGE)
			emit(eff, arg, u, MM_EFF_MSG_EXPUNGED, &old);
		if (nw.type != MM_REC_EXPUNGED)
			effects_new(u, &nw, eff, arg);
		if (nw.type == MM_REC_HORIZON)
			drop_tombs(u, nw.horizon.stamp, eff, arg);
		return 1;
	}
	switch (in->type) {
	case MM_REC_MESSAGE:
		msg_join(&m, &old, in, u->sc->kw[SCR_NEW]);
		break;
	case MM_REC_EXPUNGED:
		m = old;
		if (mm_hlc_cmp(in->tomb.stamp, m.tomb.stamp) > 0)
			m.tomb.stamp = in->tomb.stamp;
		break;
	case MM_REC_FOLDER:
		m = old;
		m.folder.exists = mm_reg_join(old.folder.exists, in->folder.exists);
		m.folder.subscribed = mm_reg_join(old.folder.subscribed, in->folder.subscribed);
		{
			int c = mm_hlc_cmp(old.folder.exists.stamp, in->folder.exists.stamp);
			uint32_t uo = folder_uv(&old), ui = folder_uv(in);
			m.folder.uidvalidity = c > 0 ? uo : c < 0 ? ui : (uo > ui ? uo : ui);
		}
		break;
	case MM_REC_HORIZON:
		m = old;
		if (mm_hlc_cmp(in->horizon.stamp, m.horizon.stamp) > 0)
			m.horizon.stamp = in->horizon.stamp;
		break;
	}
	if (mm_rec_equal(&old, &m))
		return 0;
	if ((rc = store(u, in->key, &old, &m)))
		return rc;
	switch (m.type) {
	case MM_REC_MESSAGE:
		if (immut_cmp(&old, &m)) {
			emit(eff, arg, u, MM_EFF_MSG_EXPUNGED, &old);
			emit(eff, arg, u, MM_EFF_MSG_NEW, &m);
			break;
		}
		if (flags_differ(&old, &m))
			emit(eff, arg, u, MM_EFF_MSG_FLAGS, &m);
		if (old.msg.uid_value != m.msg.uid_value || old.msg.uid_need != m.msg.uid_need)
			emit(eff, arg, u, MM_EFF_MSG_UID, &m);
		break;
	case MM_REC_FOLDER:
		if (folder_visible_change(&old, &m))
			emit(eff, arg, u, MM_EFF_FOLDER, &m);
		break;
	case MM_REC_HORIZON:
		drop_tombs(u, m.horizon.stamp, eff, arg);
		break;
	default:
		break;
	}
	return 1;
}

int mm_user_merge(struct mm_user *u, const struct mm_rec *r, mm_effect_fn *eff, void *arg)
{
	if (!u || mm_rec_validate(r))
		return -EINVAL;
	return merge_rec(u, r, eff, arg);
}

int mm_user_merge_valid(struct mm_user *u, const struct mm_rec *r, mm_effect_fn *eff, void *arg)
{
	if (!u || !r)
		return -EINVAL;
	return merge_rec(u, r, eff, arg);
}

/* ---- queries ------------------------------------------------------------------------------ */

bool mm_user_msg_body(const struct mm_user *u, const uint8_t key[MM_KEY_LEN], uint8_t body_r[MM_ID_LEN])
{
	const struct slot *s = find(u, key);
	if (!s || slot_type(s) != MM_REC_MESSAGE)
		return false;
	memcpy(body_r, s->u.m.body, MM_ID_LEN);
	return true;
}

const struct mm_rec *mm_user_get(const struct mm_user *u, const uint8_t key[MM_KEY_LEN])
{
	/* Records handed out before the last change are released lazily, here, rather
	 * than in the change itself: that keeps a record from mm_user_get usable as
	 * the input of a merge into the same user. */
	struct scratch *sc = u->sc;
	if (sc->view_ver != u->version) {
		mm_arena_reset(&sc->view[0]);
		mm_arena_reset(&sc->view[1]);
		sc->view_bytes = 0;
		sc->view_ver = u->version;
	}
	const struct slot *s = find(u, key);
	if (!s)
		return NULL;
	if (sc->view_bytes >= VIEW_GEN_BYTES) {
		sc->view_cur ^= 1;
		mm_arena_reset(&sc->view[sc->view_cur]);
		sc->view_bytes = 0;
	}
	struct mm_arena *a = &sc->view[sc->view_cur];
	struct mm_rec *r = mm_arena_alloc(a, sizeof *r);
	if (!r)
		return NULL;
	struct mm_kwreg *kw = NULL;
	size_t nk = slot_nkw(u, s);
	if (nk && !(kw = mm_arena_alloc(a, nk * sizeof *kw)))
		return NULL;
	sc->view_bytes += sizeof *r + nk * sizeof *kw;
	mat(u, s, r, kw);
	return r;
}

/* Calls fn for each slot under (prefix, depth) in key order; stops on non-zero. */
static int walk(const struct mm_user *u, const uint8_t *prefix, unsigned depth,
                int (*fn)(void *arg, const struct slot *s), void *arg)
{
	uint8_t pk[MM_KEY_LEN];
	int rc;
	if (depth > MM_MAX_DEPTH)
		depth = MM_MAX_DEPTH;
	prefix_key(prefix, depth, pk);
	if (depth <= u->B) {
		size_t first = (size_t)node_index(pk, depth) << (4 * (u->B - depth));
		size_t n = (size_t)1 << (4 * (u->B - depth));
		for (size_t b = first; b < first + n; b++)
			for (uint32_t i = 0; i < u->bk[b].n; i++)
				if ((rc = fn(arg, &u->bk[b].s[i])))
					return rc;
		return 0;
	}
	const struct bucket *b = bucket_of(u, pk);
	for (uint32_t i = lower_bound(b, pk); i < b->n && prefix_match(b->s[i].key, pk, depth); i++)
		if ((rc = fn(arg, &b->s[i])))
			return rc;
	return 0;
}

struct fe_ctx {
	const struct mm_user *u;
	struct mm_kwreg *kw;
	int (*cb)(void *arg, const struct mm_rec *r);
	void *arg;
};

static int fe_one(void *arg, const struct slot *s)
{
	struct fe_ctx *c = arg;
	struct mm_rec r;
	mat(c->u, s, &r, c->kw);
	return c->cb(c->arg, &r);
}

int mm_user_foreach(const struct mm_user *u, const uint8_t *prefix, unsigned depth,
                    int (*cb)(void *arg, const struct mm_rec *r), void *arg)
{
	struct scratch *sc = u->sc;
	struct fe_ctx c = { u, sc->kw[SCR_FE], cb, arg };
	struct mm_kwreg *own = NULL;
	if (sc->fe_depth) { /* nested foreach on the same user: own buffer */
		own = malloc(sc->cap * sizeof *own);
		if (!own)
			return -ENOMEM;
		c.kw = own;
	}
	sc->fe_depth++;
	int rc = walk(u, prefix, depth, fe_one, &c);
	sc->fe_depth--;
	free(own);
	return rc;
}

void mm_user_root(const struct mm_user *u, uint8_t root_r[MM_HASH_LEN])
{
	memcpy(root_r, u->lh[0][0], MM_HASH_LEN);
}

struct tree_ctx {
	const struct mm_user *u;
	unsigned depth; /* nibble that picks the child; > 32: no children */
	uint8_t (*h)[MM_HASH_LEN];
	uint32_t *c;
};

static int tree_one(void *arg, const struct slot *s)
{
	struct tree_ctx *t = arg;
	unsigned i = t->depth < MM_MAX_DEPTH ? nibble(s->key, t->depth) : 0;
	uint8_t h[MM_HASH_LEN];
	slot_hash(t->u, s, h);
	xor_into(t->h[i], h);
	t->c[i]++;
	return 0;
}

void mm_user_children(const struct mm_user *u, const uint8_t *prefix, unsigned depth,
                      uint8_t hashes_r[MM_FANOUT][MM_HASH_LEN], uint32_t counts_r[MM_FANOUT])
{
	uint8_t h[MM_FANOUT][MM_HASH_LEN];
	uint32_t c[MM_FANOUT];
	memset(h, 0, sizeof h);
	memset(c, 0, sizeof c);
	if (depth < MM_MAX_DEPTH) {
		if (depth + 1 <= u->B) {
			uint8_t pk[MM_KEY_LEN];
			prefix_key(prefix, depth, pk);
			uint32_t base = node_index(pk, depth) << 4;
			memcpy(h, u->lh[depth + 1][base], sizeof h);
			memcpy(c, &u->lc[depth + 1][base], sizeof c);
		} else {
			struct tree_ctx t = { u, depth, h, c };
			walk(u, prefix, depth, tree_one, &t);
		}
	}
	if (hashes_r)
		memcpy(hashes_r, h, sizeof h);
	if (counts_r)
		memcpy(counts_r, c, sizeof c);
}

void mm_user_node(const struct mm_user *u, const uint8_t *prefix, unsigned depth,
                  uint8_t hash_r[MM_HASH_LEN], uint32_t *count_r)
{
	uint8_t h[1][MM_HASH_LEN] = { { 0 } };
	uint32_t c[1] = { 0 };
	if (depth <= u->B) {
		uint8_t pk[MM_KEY_LEN];
		prefix_key(prefix, depth, pk);
		uint32_t x = node_index(pk, depth);
		memcpy(h[0], u->lh[depth][x], MM_HASH_LEN);
		c[0] = u->lc[depth][x];
	} else {
		struct tree_ctx t = { u, MM_MAX_DEPTH + 1, h, c };
		walk(u, prefix, depth, tree_one, &t);
	}
	if (hash_r)
		memcpy(hash_r, h[0], MM_HASH_LEN);
	if (count_r)
		*count_r = c[0];
}

bool mm_user_folder_visible(const struct mm_user *u, const char *name)
{
	uint32_t id;
	uint8_t key[MM_KEY_LEN];
	if (!name || intern_find(&u->folders, name, &id))
		return false;
	if (id < u->live_cap && u->live[id])
		return true;
	mm_key_folder(name, key);
	const struct slot *s = find(u, key);
	return s && slot_type(s) == MM_REC_FOLDER && (slot_val(s) & 1);
}

/* ---- local changes ----------------------------------------------------------------------- */

/* Ships the record now stored under key. */
static int ship(struct mm_user *u, const uint8_t *key, struct mm_delta *out)
{
	if (!out)
		return 0;
	const struct slot *s = find(u, key);
	if (!s)
		return 0;
	struct mm_rec r;
	mat(u, s, &r, u->sc->kw[SCR_EFF]);
	return mm_delta_add(out, u->name, &r);
}

/* Merges a locally made record and ships the result. */
static int local(struct mm_user *u, const struct mm_rec *r, mm_effect_fn *eff, void *arg, struct mm_delta *out)
{
	int rc = merge_rec(u, r, eff, arg);
	if (rc == 1) {
		int src = out ? (find(u, r->key) ? ship(u, r->key, out) : mm_delta_add(out, u->name, r)) : 0;
		if (src < 0)
			return src;
	}
	return rc;
}

static const struct slot *live_msg(const struct mm_user *u, const uint8_t *key)
{
	const struct slot *s = find(u, key);
	return s && slot_type(s) == MM_REC_MESSAGE ? s : NULL;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void folder_rec(struct mm_rec *r, const char *name)
{
	memset(r, 0, sizeof *r);
	r->type = MM_REC_FOLDER;
	r->folder.name = name;
	mm_key_folder(name, r->key);
}

/* Current folder record (zeroed registers if none); false if no record. */
static bool folder_cur(const struct mm_user *u, const char *name, struct mm_rec *r)
{
	folder_rec(r, name);
	const struct slot *s = find(u, r->key);
	if (!s || slot_type(s) != MM_REC_FOLDER)
		return false;
	mat(u, s, r, NULL);
	return true;
}

bool mm_user_removed(const struct mm_user *u)
{
	/* exists written as 0 (a delete), not a record made by a subscription alone,
	 * whose exists register was never written */
	struct mm_rec r;
	return folder_cur(u, "INBOX", &r) && !r.folder.exists.value && !stamp_zero(r.folder.exists.stamp) &&
	       !mm_user_folder_visible(u, "INBOX");
}

static bool name_ok(const char *s, bool keyword)
{
	struct mm_rec r;
	if (!s)
		return false;
	if (keyword) { /* validate through a record so the rule lives in one place */
		struct mm_kwreg kw = { s, { 1, { 1, 1 } } };
		folder_rec(&r, "x");
		r.type = MM_REC_MESSAGE;
		r.msg.folder = "x";
		r.msg.created = (mm_hlc){ 1, 1 };
		mm_key_message(&r.msg.created, r.key);
		r.msg.n_keywords = 1;
		r.msg.keywords = &kw;
		return mm_rec_validate(&r) == 0;
	}
	folder_rec(&r, s);
	return mm_rec_validate(&r) == 0;
}

int mm_user_deliver(struct mm_user *u, const char *folder, const uint8_t body[MM_ID_LEN],
                    uint64_t size, int64_t internaldate, unsigned flags,
                    const char *const *keywords, size_t n_keywords, uint32_t uid,
                    mm_hlc stamp, uint8_t key_r[MM_KEY_LEN],
                    mm_effect_fn *eff, void *arg, struct mm_delta *out)
{
	struct mm_rec r, fr;
	int rc;
	if (!u || !name_ok(folder, false) || !body || flags >= (1u << MM_FLAG_COUNT) ||
	    (n_keywords && !keywords) || n_keywords > 65535 || stamp_zero(stamp))
		return -EINVAL;
	for (size_t i = 0; i < n_keywords; i++)
		if (!name_ok(keywords[i], true))
			return -EINVAL;
	memset(&r, 0, sizeof r);
	r.type = MM_REC_MESSAGE;
	r.msg.created = stamp;
	mm_key_message(&stamp, r.key);
	if (find(u, r.key))
		return -EEXIST;
	const char **names = NULL;
	struct mm_kwreg *kws = NULL;
	if (n_keywords) {
		names = malloc(n_keywords * sizeof *names);
		kws = malloc(n_keywords * sizeof *kws);
		if (!names || !kws) {
			free(names);
			free(kws);
			return -ENOMEM;
		}
		memcpy(names, keywords, n_keywords * sizeof *names);
		qsort(names, n_keywords, sizeof *names, cmp_str);
	}
	size_t nk = 0;
	for (size_t i = 0; i < n_keywords; i++)
		if (!nk || strcmp(kws[nk - 1].name, names[i]))
			kws[nk++] = (struct mm_kwreg){ names[i], { 1, stamp } };
	memcpy(r.msg.body, body, MM_ID_LEN);
	r.msg.folder = folder;
	r.msg.size = size;
	r.msg.internaldate = internaldate;
	for (int f = 0; f < MM_FLAG_COUNT; f++)
		if (flags & (1u << f))
			r.msg.flags[f] = (struct mm_reg){ 1, stamp };
	if (uid) {
		r.msg.uid.stamp = stamp;
		r.msg.uid_value = uid;
	}
	r.msg.n_keywords = nk;
	r.msg.keywords = nk ? kws : NULL;
	rc = 0;
	if (!folder_cur(u, folder, &fr) || !fr.folder.exists.value) {
		folder_rec(&fr, folder);
		fr.folder.exists = (struct mm_reg){ 1, stamp };
		rc = local(u, &fr, eff, arg, out);
	}
	if (rc >= 0)
		rc = local(u, &r, eff, arg, out);
	if (rc > 0 && out) {
		int fr_rc = mm_delta_set_fresh(out, u->name, r.key);
		if (fr_rc < 0 && fr_rc != -ENOENT)
			rc = fr_rc;
	}
	free(names);
	free(kws);
	if (rc >= 0 && key_r)
		memcpy(key_r, r.key, MM_KEY_LEN);
	return rc < 0 ? rc : 1;
}

/* A MESSAGE record carrying only the immutable part of s (no register written):
 * joining it with a register set changes only that register. */
static void msg_base(const struct mm_user *u, const struct slot *s, struct mm_rec *r)
{
	mat(u, s, r, NULL);
	memset(r->msg.flags, 0, sizeof r->msg.flags);
	r->msg.uid = (struct mm_reg){ 0 };
	r->msg.uid_value = 0;
	r->msg.uid_need = 0;
	r->msg.n_keywords = 0;
	r->msg.keywords = NULL;
}

int mm_user_set_flag(struct mm_user *u, const uint8_t key[MM_KEY_LEN], enum mm_flag flag,
                     bool value, mm_hlc stamp, mm_effect_fn *eff, void *arg, struct mm_delta *out)
{
	if (!u || (unsigned)flag >= MM_FLAG_COUNT || stamp_zero(stamp))
		return -EINVAL;
	const struct slot *s = live_msg(u, key);
	if (!s)
		return -ENOENT;
	if (slot_reg(u, s, flag).value == value)
		return 0;
	struct mm_rec r;
	msg_base(u, s, &r);
	r.msg.flags[flag] = (struct mm_reg){ value, stamp };
	return local(u, &r, eff, arg, out);
}

int mm_user_set_keyword(struct mm_user *u, const uint8_t key[MM_KEY_LEN], const char *kw,
                        bool value, mm_hlc stamp, mm_effect_fn *eff, void *arg, struct mm_delta *out)
{
	uint32_t id;
	if (!u || !name_ok(kw, true) || stamp_zero(stamp))
		return -EINVAL;
	const struct slot *s = live_msg(u, key);
	if (!s)
		return -ENOENT;
	uint8_t cur = intern_find(&u->kws, kw, &id) ? 0 : slot_reg(u, s, ID_KW0 + id).value;
	if (cur == value)
		return 0;
	struct mm_rec r;
	struct mm_kwreg k = { kw, { value, stamp } };
	msg_base(u, s, &r);
	r.msg.n_keywords = 1;
	r.msg.keywords = &k;
	return local(u, &r, eff, arg, out);
}

int mm_user_set_uid(struct mm_user *u, const uint8_t key[MM_KEY_LEN], uint32_t uid,
                    mm_hlc stamp, mm_effect_fn *eff, void *arg, struct mm_delta *out)
{
	if (!u || stamp_zero(stamp))
		return -EINVAL;
	const struct slot *s = live_msg(u, key);
	if (!s)
		return -ENOENT;
	if (s->u.m.uid == uid)
		return 0;
	struct mm_rec r;
	msg_base(u, s, &r);
	r.msg.uid.stamp = stamp;
	r.msg.uid_value = uid;
	return local(u, &r, eff, arg, out);
}

int mm_user_uid_need(struct mm_user *u, const uint8_t key[MM_KEY_LEN], uint32_t need,
                     mm_effect_fn *eff, void *arg, struct mm_delta *out)
{
	if (!u || !need)
		return -EINVAL;
	const struct slot *s = live_msg(u, key);
	if (!s)
		return -ENOENT;
	struct mm_rec r;
	mat(u, s, &r, NULL);
	if (r.msg.uid_need >= need)
		return 0;
	msg_base(u, s, &r);
	r.msg.uid_need = need;
	return local(u, &r, eff, arg, out);
}

int mm_user_expunge(struct mm_user *u, const uint8_t key[MM_KEY_LEN], mm_hlc stamp,
                    mm_effect_fn *eff, void *arg, struct mm_delta *out)
{
	if (!u)
		return -EINVAL;
	const struct slot *s = find(u, key);
	if (!s || (slot_type(s) != MM_REC_MESSAGE && slot_type(s) != MM_REC_EXPUNGED))
		return -ENOENT;
	if (slot_type(s) == MM_REC_EXPUNGED)
		return 0;
	struct mm_rec r;
	memset(&r, 0, sizeof r);
	r.type = MM_REC_EXPUNGED;
	memcpy(r.key, key, MM_KEY_LEN);
	r.tomb.stamp = stamp;
	return local(u, &r, eff, arg, out);
}

int mm_user_folder_create(struct mm_user *u, const char *name, mm_hlc stamp,
                          mm_effect_fn *eff, void *arg, struct mm_delta *out)
{
	struct mm_rec r;
	if (!u || !name_ok(name, false) || stamp_zero(stamp))
		return -EINVAL;
	if (folder_cur(u, name, &r) && r.folder.exists.value)
		return 0;
	folder_rec(&r, name);
	r.folder.exists = (struct mm_reg){ 1, stamp };
	return local(u, &r, eff, arg, out);
}

struct coll {
	uint32_t folder;
	uint8_t (*keys)[MM_KEY_LEN];
	size_t n, cap;
};

static int coll_one(void *arg, const struct slot *s)
{
	struct coll *c = arg;
	if (slot_type(s) != MM_REC_MESSAGE || s->u.m.folder != c->folder)
		return 0;
	if (c->n == c->cap) {
		size_t nc = c->cap ? c->cap * 2 : 16;
		void *p = realloc(c->keys, nc * MM_KEY_LEN);
		if (!p)
			return -ENOMEM;
		c->keys = p;
		c->cap = nc;
	}
	memcpy(c->keys[c->n++], s->key, MM_KEY_LEN);
	return 0;
}

int mm_user_folder_delete(struct mm_user *u, const char *name, mm_hlc stamp,
                          mm_effect_fn *eff, void *arg, struct mm_delta *out)
{
	struct mm_rec r;
	struct coll c = { 0 };
	int rc, changed = 0;
	if (!u || !name_ok(name, false) || stamp_zero(stamp))
		return -EINVAL;
	bool have = folder_cur(u, name, &r);
	if (!intern_find(&u->folders, name, &c.folder) && c.folder < u->live_cap && u->live[c.folder]) {
		if ((rc = walk(u, NULL, 0, coll_one, &c))) {
			free(c.keys);
			return rc;
		}
	} else if (!have) {
		return -ENOENT;
	}
	if (!have || r.folder.exists.value) {
		folder_rec(&r, name);
		r.folder.exists = (struct mm_reg){ 0, stamp };
		if ((rc = local(u, &r, eff, arg, out)) < 0)
			goto done;
		changed |= rc;
	}
	for (size_t i = 0; i < c.n; i++) {
		if ((rc = mm_user_expunge(u, c.keys[i], stamp, eff, arg, out)) < 0)
			goto done;
		changed |= rc;
	}
	rc = changed;
done:
	free(c.keys);
	return rc;
}

int mm_user_folder_subscribe(struct mm_user *u, const char *name, bool value, mm_hlc stamp,
                             mm_effect_fn *eff, void *arg, struct mm_delta *out)
{
	struct mm_rec r;
	if (!u || !name_ok(name, false) || stamp_zero(stamp))
		return -EINVAL;
	folder_cur(u, name, &r);
	if (r.folder.subscribed.value == value)
		return 0;
	folder_rec(&r, name);
	r.folder.subscribed = (struct mm_reg){ value, stamp };
	return local(u, &r, eff, arg, out);
}

int mm_user_gc(struct mm_user *u, mm_hlc horizon, mm_effect_fn *eff, void *arg, struct mm_delta *out)
{
	mm_hlc cur;
	if (!u)
		return -EINVAL;
	bool had = horizon_get(u, &cur);
	if (had && mm_hlc_cmp(horizon, cur) <= 0)
		return 0;
	struct mm_rec r;
	memset(&r, 0, sizeof r);
	r.type = MM_REC_HORIZON;
	memcpy(r.key, u->hkey, MM_KEY_LEN);
	r.horizon.stamp = horizon;
	size_t before = u->count;
	int rc = merge_rec(u, &r, eff, arg);
	if (rc < 0)
		return rc;
	/* The record count moved by +1 for a new horizon record, -1 per tombstone. */
	size_t dropped = before + (had ? 0 : 1) - u->count;
	if (rc == 1 && out && (rc = ship(u, u->hkey, out)) < 0)
		return rc;
	return (int)dropped;
}

/* ---- IMAP UIDs (issue 7): the folder's highest number ----------------------------
 * The rule itself is crdt/uid.c; the state only keeps the registers. */

uint32_t mm_user_uid_top(const struct mm_user *u, const char *folder)
{
	uint32_t id, top = 0;
	if (!u || !folder || intern_find(&u->folders, folder, &id))
		return 0;
	for (size_t bi = 0; bi < (size_t)1 << (4 * u->B); bi++) {
		const struct bucket *b = &u->bk[bi];
		for (uint32_t i = 0; i < b->n; i++) {
			const struct slot *sl = &b->s[i];
			if (slot_type(sl) != MM_REC_MESSAGE || sl->u.m.folder != id)
				continue;
			if (sl->u.m.uid > top)
				top = sl->u.m.uid;
			const struct ext *x = slot_ext(u, sl);
			for (uint32_t k = 0; x && k < x->n; k++)
				if (x->e[k].id == ID_NEED && x->e[k].stamp.t > top)
					top = (uint32_t)x->e[k].stamp.t;
		}
	}
	return top;
}

int mm_user_folder_renew(struct mm_user *u, const char *name, mm_hlc stamp, uint32_t uidvalidity,
                         mm_effect_fn *eff, void *arg, struct mm_delta *out)
{
	struct mm_rec r;
	if (!u || !name_ok(name, false) || stamp_zero(stamp))
		return -EINVAL;
	folder_rec(&r, name);
	r.folder.exists = (struct mm_reg){ 1, stamp };
	r.folder.uidvalidity = uidvalidity;
	return local(u, &r, eff, arg, out);
}

uint64_t mm_gc_horizon_ms(uint64_t now_ms, uint64_t grace_ms, uint64_t max_ms, uint64_t margin_ms,
                          const uint64_t *peer_synced_ms, const uint64_t *peer_bound_ms, size_t n)
{
	if (now_ms <= grace_ms)
		return 0;
	uint64_t h = now_ms - grace_ms;
	uint64_t gone_before = now_ms > max_ms ? now_ms - max_ms : 0; /* in sync before: not waited for */
	for (size_t i = 0; i < n; i++) {
		uint64_t e = peer_synced_ms[i];
		if (!e || e <= gone_before)
			continue;
		uint64_t bound = e > margin_ms ? e - margin_ms : 0;
		if (bound < h)
			h = bound;
		if (peer_bound_ms && peer_bound_ms[i] < h)
			h = peer_bound_ms[i]; /* (none received yet: 0, no GC until it comes) */
	}
	return h;
}

bool mm_gc_stale(uint64_t now_ms, uint64_t max_ms, uint64_t margin_ms, const uint64_t *last_in_sync_ms,
                 size_t n, uint64_t *last_r)
{
	uint64_t last = 0;
	for (size_t i = 0; i < n; i++)
		if (last_in_sync_ms[i] > last)
			last = last_in_sync_ms[i];
	if (last_r)
		*last_r = last;
	uint64_t wait = max_ms > margin_ms ? max_ms - margin_ms : 0;
	return last != 0 && now_ms >= last && now_ms - last >= wait;
}

static int id_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

uint64_t mm_gc_members_hash(uint64_t *ids, size_t n)
{
	if (n > 1)
		qsort(ids, n, sizeof *ids, id_cmp);
	crypto_generichash_state h;
	crypto_generichash_init(&h, NULL, 0, 8);
	crypto_generichash_update(&h, (const uint8_t *)"mm-gc-members", 13);
	for (size_t i = 0; i < n; i++) {
		uint8_t be[8];
		for (int k = 0; k < 8; k++)
			be[k] = (uint8_t)(ids[i] >> (56 - 8 * k));
		crypto_generichash_update(&h, be, sizeof be);
	}
	uint8_t out[8];
	crypto_generichash_final(&h, out, sizeof out);
	uint64_t v = 0;
	for (int k = 0; k < 8; k++)
		v = v << 8 | out[k];
	return v ? v : 1;
}

uint64_t mm_gc_peer_bound(const struct mm_gc_peer *g, uint64_t members)
{
	return g->members == members ? g->bound_ms : 0;
}

uint64_t mm_gc_peer_tick(struct mm_gc_peer *g, uint64_t last_equal_ms, uint64_t conn, bool up)
{
	if (g->sample_up && up && conn == g->sample_conn && g->sample_ms > g->synced_ms)
		g->synced_ms = g->sample_ms;
	g->sample_ms = last_equal_ms;
	g->sample_conn = conn;
	g->sample_up = up;
	return g->synced_ms ? g->synced_ms : g->known_ms;
}
