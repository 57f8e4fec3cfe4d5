/*
 * tool_noise-vectors.c — build/tests/noise-vectors FILE...: runs every vector of the
 * suite 25519_ChaChaPoly_BLAKE2b in cacophony-format JSON files against proto/noise
 * (both sides: every handshake ciphertext, the handshake hash, and the transport
 * messages after Split()).  Vectors of other suites are counted as skipped.  Names each
 * failing protocol and ends with `N passed, N failed`; exits 1 on any failure, 2 if a
 * file cannot be read or parsed.
 *
 * Carries its own small bounds-checked JSON reader (no new dependency): a tree of
 * values with a depth limit, strings with escapes decoded.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "proto/noise.h"

/* ---- JSON ------------------------------------------------------------------------ */

enum jtype { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

struct jval {
	enum jtype type;
	char *str;            /* J_STR: decoded, NUL-terminated; J_OBJ member: key */
	size_t len;           /* J_STR length */
	struct jval **items;  /* J_ARR elements / J_OBJ values */
	char **keys;          /* J_OBJ keys */
	size_t n;
};

struct jcur {
	const char *p, *end;
	int depth;
};

static void jfree(struct jval *v)
{
	if (!v)
		return;
	for (size_t i = 0; i < v->n; i++) {
		jfree(v->items[i]);
		if (v->keys)
			free(v->keys[i]);
	}
	free(v->items);
	free(v->keys);
	free(v->str);
	free(v);
}

static void skip_ws(struct jcur *c)
{
	while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
		c->p++;
}

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9') return ch - '0';
	if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
	return -1;
}

static char *parse_string(struct jcur *c, size_t *len_r)
{
	if (c->p >= c->end || *c->p != '"')
		return NULL;
	c->p++;
	size_t cap = 16, n = 0;
	char *s = malloc(cap);
	if (!s)
		return NULL;
	while (c->p < c->end && *c->p != '"') {
		unsigned char ch = (unsigned char)*c->p++;
		char buf[4];
		size_t bl = 1;
		if (ch < 0x20)
			goto bad;
		if (ch == '\\') {
			if (c->p >= c->end)
				goto bad;
			char e = *c->p++;
			switch (e) {
			case '"': buf[0] = '"'; break;
			case '\\': buf[0] = '\\'; break;
			case '/': buf[0] = '/'; break;
			case 'b': buf[0] = '\b'; break;
			case 'f': buf[0] = '\f'; break;
			case 'n': buf[0] = '\n'; break;
			case 'r': buf[0] = '\r'; break;
			case 't': buf[0] = '\t'; break;
			case 'u': {
				unsigned u = 0;
				if (c->end - c->p < 4)
					goto bad;
				for (int i = 0; i < 4; i++) {
					int h = hexval(c->p[i]);
					if (h < 0)
						goto bad;
					u = u * 16 + (unsigned)h;
				}
				c->p += 4;
				/* BMP only (surrogates kept as-is): enough for this format */
				if (u < 0x80) { buf[0] = (char)u; }
				else if (u < 0x800) { buf[0] = (char)(0xc0 | (u >> 6)); buf[1] = (char)(0x80 | (u & 0x3f)); bl = 2; }
				else { buf[0] = (char)(0xe0 | (u >> 12)); buf[1] = (char)(0x80 | ((u >> 6) & 0x3f)); buf[2] = (char)(0x80 | (u & 0x3f)); bl = 3; }
				break;
			}
			default:
				goto bad;
			}
		} else {
			buf[0] = (char)ch;
		}
		if (n + bl + 1 > cap) {
			cap = cap * 2 + bl;
			char *ns = realloc(s, cap);
			if (!ns)
				goto bad;
			s = ns;
		}
		memcpy(s + n, buf, bl);
		n += bl;
	}
	if (c->p >= c->end)
		goto bad;
	c->p++; /* closing quote */
	s[n] = 0;
	*len_r = n;
	return s;
bad:
	free(s);
	return NULL;
}

static struct jval *parse_value(struct jcur *c);

static int push(struct jval *v, struct jval *item, char *key)
{
	struct jval **ni = realloc(v->items, (v->n + 1) * sizeof *ni);
	if (!ni)
		return -1;
	v->items = ni;
	if (v->type == J_OBJ) {
		char **nk = realloc(v->keys, (v->n + 1) * sizeof *nk);
		if (!nk)
			return -1;
		v->keys = nk;
		v->keys[v->n] = key;
	}
	v->items[v->n++] = item;
	return 0;
}

static struct jval *parse_value(struct jcur *c)
{
	skip_ws(c);
	if (c->p >= c->end || c->depth > 64)
		return NULL;
	struct jval *v = calloc(1, sizeof *v);
	if (!v)
		return NULL;
	char ch = *c->p;
	if (ch == '{' || ch == '[') {
		char close = ch == '{' ? '}' : ']';
		v->type = ch == '{' ? J_OBJ : J_ARR;
		c->p++;
		c->depth++;
		skip_ws(c);
		if (c->p < c->end && *c->p == close) {
			c->p++;
			c->depth--;
			return v;
		}
		for (;;) {
			char *key = NULL;
			size_t kl;
			skip_ws(c);
			if (v->type == J_OBJ) {
				key = parse_string(c, &kl);
				if (!key)
					goto bad;
				skip_ws(c);
				if (c->p >= c->end || *c->p != ':') {
					free(key);
					goto bad;
				}
				c->p++;
			}
			struct jval *item = parse_value(c);
			if (!item || push(v, item, key) < 0) {
				jfree(item);
				free(key);
				goto bad;
			}
			skip_ws(c);
			if (c->p >= c->end)
				goto bad;
			if (*c->p == ',') {
				c->p++;
				continue;
			}
			if (*c->p == close) {
				c->p++;
				break;
			}
			goto bad;
		}
		c->depth--;
		return v;
	}
	if (ch == '"') {
		v->type = J_STR;
		v->str = parse_string(c, &v->len);
		if (!v->str)
			goto bad;
		return v;
	}
	if (c->end - c->p >= 4 && !memcmp(c->p, "null", 4)) { v->type = J_NULL; c->p += 4; return v; }
	if (c->end - c->p >= 4 && !memcmp(c->p, "true", 4)) { v->type = J_BOOL; c->p += 4; return v; }
	if (c->end - c->p >= 5 && !memcmp(c->p, "false", 5)) { v->type = J_BOOL; c->p += 5; return v; }
	if (ch == '-' || (ch >= '0' && ch <= '9')) {
		v->type = J_NUM;
		while (c->p < c->end && strchr("+-0123456789.eE", *c->p))
			c->p++;
		return v;
	}
bad:
	jfree(v);
	return NULL;
}

static const struct jval *jget(const struct jval *o, const char *key)
{
	if (!o || o->type != J_OBJ)
		return NULL;
	for (size_t i = 0; i < o->n; i++)
		if (!strcmp(o->keys[i], key))
			return o->items[i];
	return NULL;
}

/* ---- hex fields ------------------------------------------------------------------- */

/* Decodes a hex string value; returns malloc'd bytes (len in *n) or NULL on error.
 * An absent field gives NULL with *present = 0. */
static uint8_t *hexfield(const struct jval *v, size_t *n, int *ok)
{
	*n = 0;
	if (!v || v->type != J_STR || v->len % 2) {
		*ok = 0;
		return NULL;
	}
	uint8_t *b = malloc(v->len / 2 + 1);
	if (!b) {
		*ok = 0;
		return NULL;
	}
	for (size_t i = 0; i < v->len / 2; i++) {
		int hi = hexval(v->str[2 * i]), lo = hexval(v->str[2 * i + 1]);
		if (hi < 0 || lo < 0) {
			free(b);
			*ok = 0;
			return NULL;
		}
		b[i] = (uint8_t)(hi * 16 + lo);
	}
	*n = v->len / 2;
	*ok = 1;
	return b;
}

/* A 32-byte key field: 1 if present and valid, 0 if absent, -1 if malformed. */
static int keyfield(const struct jval *vec, const char *name, uint8_t out[32])
{
	const struct jval *v = jget(vec, name);
	size_t n;
	int ok;
	if (!v)
		return 0;
	uint8_t *b = hexfield(v, &n, &ok);
	if (!ok || n != 32) {
		free(b);
		return -1;
	}
	memcpy(out, b, 32);
	free(b);
	return 1;
}

/* ---- running one vector ------------------------------------------------------------ */

static const char SUITE[] = "_25519_ChaChaPoly_BLAKE2b";

struct side {
	uint8_t s[32], e[32], rs[32];
	int has_s, has_e, has_rs;
	uint8_t *prologue;
	size_t prologue_len;
	uint8_t psks[MM_NOISE_MAX_PSKS][32];
	size_t n_psks;
};

static int load_side(const struct jval *vec, const char *pfx, struct side *sd, char *why, size_t wl)
{
	char name[64];
	int ok;
	memset(sd, 0, sizeof *sd);
#define KEY(field, dst, flag) \
	snprintf(name, sizeof name, "%s_%s", pfx, field); \
	if ((sd->flag = keyfield(vec, name, sd->dst)) < 0) { snprintf(why, wl, "bad %s", name); return -1; }
	KEY("static", s, has_s);
	KEY("ephemeral", e, has_e);
	KEY("remote_static", rs, has_rs);
#undef KEY
	snprintf(name, sizeof name, "%s_prologue", pfx);
	const struct jval *pv = jget(vec, name);
	if (pv) {
		sd->prologue = hexfield(pv, &sd->prologue_len, &ok);
		if (!ok) {
			snprintf(why, wl, "bad %s", name);
			return -1;
		}
	}
	snprintf(name, sizeof name, "%s_psks", pfx);
	const struct jval *ps = jget(vec, name);
	if (ps) {
		if (ps->type != J_ARR || ps->n > MM_NOISE_MAX_PSKS) {
			snprintf(why, wl, "bad %s", name);
			return -1;
		}
		for (size_t i = 0; i < ps->n; i++) {
			size_t n;
			uint8_t *b = hexfield(ps->items[i], &n, &ok);
			if (!ok || n != 32) {
				free(b);
				snprintf(why, wl, "bad %s[%zu]", name, i);
				return -1;
			}
			memcpy(sd->psks[i], b, 32);
			free(b);
		}
		sd->n_psks = ps->n;
	}
	return 0;
}

static int run_vector(const struct jval *vec, const char *proto, char *why, size_t wl)
{
	struct side si, sr;
	struct mm_noise_hs hi, hr;
	struct mm_noise_cipher c1i, c2i, c1r, c2r;
	uint8_t hhi[MM_NOISE_HASHLEN], hhr[MM_NOISE_HASHLEN];
	uint8_t *buf = malloc(MM_NOISE_MAX_MSG), *pbuf = malloc(MM_NOISE_MAX_MSG);
	int rc = -1, split = 0, hs_msgs = 0;

	memset(&si, 0, sizeof si);
	memset(&sr, 0, sizeof sr);
	if (!buf || !pbuf) {
		snprintf(why, wl, "out of memory");
		goto out;
	}
	if (load_side(vec, "init", &si, why, wl) < 0 || load_side(vec, "resp", &sr, why, wl) < 0)
		goto out;
	struct mm_noise_config ci = {
		.protocol = proto, .initiator = 1,
		.prologue = si.prologue, .prologue_len = si.prologue_len,
		.s = si.has_s ? si.s : NULL, .e = si.has_e ? si.e : NULL,
		.rs = si.has_rs ? si.rs : NULL,
		.psks = (const uint8_t(*)[32])si.psks, .n_psks = si.n_psks,
	};
	struct mm_noise_config cr = {
		.protocol = proto, .initiator = 0,
		.prologue = sr.prologue, .prologue_len = sr.prologue_len,
		.s = sr.has_s ? sr.s : NULL, .e = sr.has_e ? sr.e : NULL,
		.rs = sr.has_rs ? sr.rs : NULL,
		.psks = (const uint8_t(*)[32])sr.psks, .n_psks = sr.n_psks,
	};
	int e;
	if ((e = mm_noise_hs_init(&hi, &ci)) < 0) {
		snprintf(why, wl, "initiator init: %s", strerror(-e));
		goto out;
	}
	if ((e = mm_noise_hs_init(&hr, &cr)) < 0) {
		snprintf(why, wl, "responder init: %s", strerror(-e));
		goto out;
	}
	const struct jval *msgs = jget(vec, "messages");
	if (!msgs || msgs->type != J_ARR) {
		snprintf(why, wl, "no messages");
		goto out;
	}
	for (size_t i = 0; i < msgs->n; i++) {
		size_t pl, cl, ol, got;
		int ok1, ok2;
		uint8_t *pt = hexfield(jget(msgs->items[i], "payload"), &pl, &ok1);
		uint8_t *ct = hexfield(jget(msgs->items[i], "ciphertext"), &cl, &ok2);
		int bad = 0;
		if (!ok1 || !ok2) {
			snprintf(why, wl, "message %zu: bad payload/ciphertext field", i);
			bad = 1;
		} else if (!split) {
			struct mm_noise_hs *snd, *rcv;
			if (mm_noise_hs_state(&hi) == MM_NOISE_HS_WRITE && mm_noise_hs_state(&hr) == MM_NOISE_HS_READ) {
				snd = &hi; rcv = &hr;
			} else if (mm_noise_hs_state(&hr) == MM_NOISE_HS_WRITE && mm_noise_hs_state(&hi) == MM_NOISE_HS_READ) {
				snd = &hr; rcv = &hi;
			} else {
				snprintf(why, wl, "message %zu: sides disagree on whose turn it is", i);
				bad = 1;
				snd = rcv = NULL;
			}
			if (!bad && (e = mm_noise_hs_write(snd, pt, pl, buf, MM_NOISE_MAX_MSG, &ol)) < 0) {
				snprintf(why, wl, "message %zu: write: %s", i, strerror(-e));
				bad = 1;
			} else if (!bad && (ol != cl || memcmp(buf, ct, cl))) {
				snprintf(why, wl, "message %zu (handshake): ciphertext differs", i);
				bad = 1;
			} else if (!bad && (e = mm_noise_hs_read(rcv, ct, cl, pbuf, MM_NOISE_MAX_MSG, &got)) < 0) {
				snprintf(why, wl, "message %zu: read: %s", i, strerror(-e));
				bad = 1;
			} else if (!bad && (got != pl || memcmp(pbuf, pt, pl))) {
				snprintf(why, wl, "message %zu (handshake): payload differs", i);
				bad = 1;
			}
			hs_msgs++;
			if (!bad && mm_noise_hs_state(&hi) == MM_NOISE_HS_SPLIT) {
				if (mm_noise_hs_state(&hr) != MM_NOISE_HS_SPLIT ||
				    mm_noise_hs_split(&hi, &c1i, &c2i, hhi) < 0 ||
				    mm_noise_hs_split(&hr, &c1r, &c2r, hhr) < 0) {
					snprintf(why, wl, "message %zu: split failed", i);
					bad = 1;
				}
				split = 1;
			}
		} else {
			/* transport: one-way patterns (one handshake message) only go initiator ->
			 * responder; interactive ones keep alternating */
			int by_init = hs_msgs == 1 || i % 2 == 0;
			struct mm_noise_cipher *enc = by_init ? &c1i : &c2r;
			struct mm_noise_cipher *dec = by_init ? &c1r : &c2i;
			if ((e = mm_noise_cipher_encrypt(enc, NULL, 0, pt, pl, buf, MM_NOISE_MAX_MSG, &ol)) < 0) {
				snprintf(why, wl, "message %zu: encrypt: %s", i, strerror(-e));
				bad = 1;
			} else if (ol != cl || memcmp(buf, ct, cl)) {
				snprintf(why, wl, "message %zu (transport): ciphertext differs", i);
				bad = 1;
			} else if ((e = mm_noise_cipher_decrypt(dec, NULL, 0, ct, cl, pbuf, MM_NOISE_MAX_MSG, &got)) < 0) {
				snprintf(why, wl, "message %zu: decrypt: %s", i, strerror(-e));
				bad = 1;
			} else if (got != pl || memcmp(pbuf, pt, pl)) {
				snprintf(why, wl, "message %zu (transport): payload differs", i);
				bad = 1;
			}
		}
		free(pt);
		free(ct);
		if (bad)
			goto out;
	}
	if (!split) {
		snprintf(why, wl, "handshake did not complete in %zu messages", msgs->n);
		goto out;
	}
	size_t hl;
	int ok;
	uint8_t *want = hexfield(jget(vec, "handshake_hash"), &hl, &ok);
	if (!ok || hl != MM_NOISE_HASHLEN) {
		snprintf(why, wl, "bad or missing handshake_hash");
		free(want);
		goto out;
	}
	if (memcmp(hhi, want, hl) || memcmp(hhr, want, hl)) {
		snprintf(why, wl, "handshake hash differs");
		free(want);
		goto out;
	}
	free(want);
	rc = 0;
out:
	free(si.prologue);
	free(sr.prologue);
	free(buf);
	free(pbuf);
	mm_noise_hs_wipe(&hi);
	mm_noise_hs_wipe(&hr);
	return rc;
}

static char *slurp(const char *path, size_t *len_r)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 1 << 16, n = 0;
	char *b = malloc(cap);
	while (b) {
		size_t r = fread(b + n, 1, cap - n, f);
		n += r;
		if (n < cap)
			break;
		char *nb = realloc(b, cap * 2);
		if (!nb) {
			free(b);
			b = NULL;
			break;
		}
		b = nb;
		cap *= 2;
	}
	if (b && ferror(f)) {
		free(b);
		b = NULL;
	}
	fclose(f);
	*len_r = n;
	return b;
}

int main(int argc, char **argv)
{
	unsigned passed = 0, failed = 0, skipped = 0;
	int status = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: noise-vectors FILE...\n");
		return 2;
	}
	if (sodium_init() < 0)
		return 2;
	for (int a = 1; a < argc; a++) {
		size_t len;
		char *text = slurp(argv[a], &len);
		if (!text) {
			fprintf(stderr, "%s: cannot read: %s\n", argv[a], strerror(errno));
			status = 2;
			continue;
		}
		struct jcur c = { text, text + len, 0 };
		struct jval *root = parse_value(&c);
		skip_ws(&c);
		const struct jval *vecs = jget(root, "vectors");
		if (!root || c.p != c.end || !vecs || vecs->type != J_ARR) {
			fprintf(stderr, "%s: not a vector file (JSON object with a \"vectors\" array)\n", argv[a]);
			jfree(root);
			free(text);
			status = 2;
			continue;
		}
		for (size_t i = 0; i < vecs->n; i++) {
			const struct jval *v = vecs->items[i];
			const struct jval *pn = jget(v, "protocol_name");
			if (!pn || pn->type != J_STR) {
				printf("FAIL %s: vector %zu: no protocol_name\n", argv[a], i);
				failed++;
				continue;
			}
			size_t sl = strlen(SUITE);
			if (pn->len < sl || strcmp(pn->str + pn->len - sl, SUITE) != 0) {
				skipped++;
				continue;
			}
			char why[256] = "";
			if (run_vector(v, pn->str, why, sizeof why) == 0) {
				passed++;
			} else {
				printf("FAIL %s: %s\n", pn->str, why);
				failed++;
			}
		}
		jfree(root);
		free(text);
	}
	printf("%u skipped (other suites)\n", skipped);
	printf("%u passed, %u failed\n", passed, failed);
	if (failed)
		return 1;
	return status;
}
