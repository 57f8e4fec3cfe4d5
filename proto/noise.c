/*
 * noise.c — Noise revision 34, suite 25519_ChaChaPoly_BLAKE2b, generic over pattern
 * token tables (see noise.h).  Section numbers in comments are the spec's.
 */
#include "proto/noise.h"

#include <errno.h>
#include <string.h>

#include <sodium.h>

#define BLOCKLEN 128

enum tok { T_E = 1, T_S, T_EE, T_ES, T_SE, T_SS, T_PSK };

/* Pattern table: pre-messages of initiator and responder, then the messages ("|"
 * separates them), tokens separated by spaces.  Sections 7.4, 7.5 and 18. */
struct pattern {
	const char *name, *pre_i, *pre_r, *msgs;
};

static const struct pattern patterns[] = {
	/* one-way (7.4) */
	{ "N", "", "s", "e es" },
	{ "K", "s", "s", "e es ss" },
	{ "X", "", "s", "e es s ss" },
	/* interactive (7.5) */
	{ "NN", "", "", "e|e ee" },
	{ "NK", "", "s", "e es|e ee" },
	{ "NX", "", "", "e|e ee s es" },
	{ "KN", "s", "", "e|e ee se" },
	{ "KK", "s", "s", "e es ss|e ee se" },
	{ "KX", "s", "", "e|e ee se s es" },
	{ "XN", "", "", "e|e ee|s se" },
	{ "XK", "", "s", "e es|e ee|s se" },
	{ "XX", "", "", "e|e ee s es|s se" },
	{ "IN", "", "", "e s|e ee se" },
	{ "IK", "", "s", "e es s ss|e ee se" },
	{ "IX", "", "", "e s|e ee se s es" },
	/* deferred (18.2) */
	{ "NK1", "", "s", "e|e ee es" },
	{ "NX1", "", "", "e|e ee s|es" },
	{ "X1N", "", "", "e|e ee|s|se" },
	{ "X1K", "", "s", "e es|e ee|s|se" },
	{ "XK1", "", "s", "e|e ee es|s se" },
	{ "X1K1", "", "s", "e|e ee es|s|se" },
	{ "X1X", "", "", "e|e ee s es|s|se" },
	{ "XX1", "", "", "e|e ee s|es s se" },
	{ "X1X1", "", "", "e|e ee s|es s|se" },
	{ "K1N", "s", "", "e|e ee|se" },
	{ "K1K", "s", "s", "e es|e ee|se" },
	{ "KK1", "s", "s", "e|e ee se es" },
	{ "K1K1", "s", "s", "e|e ee es|se" },
	{ "K1X", "s", "", "e|e ee s es|se" },
	{ "KX1", "s", "", "e|e ee se s|es" },
	{ "K1X1", "s", "", "e|e ee s|se es" },
	{ "I1N", "", "", "e s|e ee|se" },
	{ "I1K", "", "s", "e es s|e ee|se" },
	{ "IK1", "", "s", "e s|e ee se es" },
	{ "I1K1", "", "s", "e s|e ee es|se" },
	{ "I1X", "", "", "e s|e ee s es|se" },
	{ "IX1", "", "", "e s|e ee se s|es" },
	{ "I1X1", "", "", "e s|e ee s|se es" },
};

static const char SUITE[] = "_25519_ChaChaPoly_BLAKE2b";

/* ---- hash, HMAC, HKDF (4.3, 4.3's HMAC of RFC 2104 with BLOCKLEN 128) ------------- */

static void hmac(const uint8_t *key, size_t keylen, const uint8_t *d1, size_t l1,
                 const uint8_t *d2, size_t l2, uint8_t out[MM_NOISE_HASHLEN])
{
	uint8_t pad[BLOCKLEN], inner[MM_NOISE_HASHLEN];
	crypto_generichash_state st;

	/* keys here are at most HASHLEN (64) < BLOCKLEN, so never hashed first */
	memset(pad, 0x36, sizeof pad);
	for (size_t i = 0; i < keylen; i++)
		pad[i] ^= key[i];
	crypto_generichash_init(&st, NULL, 0, MM_NOISE_HASHLEN);
	crypto_generichash_update(&st, pad, sizeof pad);
	if (l1)
		crypto_generichash_update(&st, d1, l1);
	if (l2)
		crypto_generichash_update(&st, d2, l2);
	crypto_generichash_final(&st, inner, sizeof inner);

	memset(pad, 0x5c, sizeof pad);
	for (size_t i = 0; i < keylen; i++)
		pad[i] ^= key[i];
	crypto_generichash_init(&st, NULL, 0, MM_NOISE_HASHLEN);
	crypto_generichash_update(&st, pad, sizeof pad);
	crypto_generichash_update(&st, inner, sizeof inner);
	crypto_generichash_final(&st, out, MM_NOISE_HASHLEN);

	sodium_memzero(pad, sizeof pad);
	sodium_memzero(inner, sizeof inner);
	sodium_memzero(&st, sizeof st);
}

void mm_noise_hkdf(const uint8_t ck[MM_NOISE_HASHLEN], const uint8_t *ikm, size_t ikm_len,
                   uint8_t out1[MM_NOISE_HASHLEN], uint8_t out2[MM_NOISE_HASHLEN],
                   uint8_t out3[MM_NOISE_HASHLEN])
{
	uint8_t temp[MM_NOISE_HASHLEN], o1[MM_NOISE_HASHLEN], o2[MM_NOISE_HASHLEN];
	const uint8_t one = 1, two = 2, three = 3;

	hmac(ck, MM_NOISE_HASHLEN, ikm, ikm_len, NULL, 0, temp);
	hmac(temp, sizeof temp, &one, 1, NULL, 0, o1);
	hmac(temp, sizeof temp, o1, sizeof o1, &two, 1, o2);
	if (out3)
		hmac(temp, sizeof temp, o2, sizeof o2, &three, 1, out3);
	memcpy(out1, o1, sizeof o1); /* out1 may alias ck: copy at the end */
	if (out2)
		memcpy(out2, o2, sizeof o2);
	sodium_memzero(temp, sizeof temp);
	sodium_memzero(o1, sizeof o1);
	sodium_memzero(o2, sizeof o2);
}

/* ---- CipherState (5.1) ------------------------------------------------------------ */

static void nonce_bytes(uint64_t n, uint8_t out[12])
{
	memset(out, 0, 4);
	for (int i = 0; i < 8; i++)
		out[4 + i] = (uint8_t)(n >> (8 * i));
}

void mm_noise_cipher_init(struct mm_noise_cipher *c, const uint8_t *key)
{
	if (key) {
		memmove(c->k, key, MM_NOISE_KEYLEN);
		c->has_key = 1;
	} else {
		sodium_memzero(c->k, sizeof c->k);
		c->has_key = 0;
	}
	c->n = 0;
}

void mm_noise_cipher_wipe(struct mm_noise_cipher *c)
{
	sodium_memzero(c, sizeof *c);
}

static int enc_raw(const uint8_t k[32], uint64_t n, const uint8_t *ad, size_t adlen,
                   const uint8_t *pt, size_t ptlen, uint8_t *out)
{
	uint8_t nonce[12];
	unsigned long long clen = 0;
	nonce_bytes(n, nonce);
	return crypto_aead_chacha20poly1305_ietf_encrypt(out, &clen, pt, ptlen, ad, adlen,
	                                                 NULL, nonce, k);
}

int mm_noise_cipher_encrypt_at(const struct mm_noise_cipher *c, uint64_t n,
                               const uint8_t *ad, size_t adlen, const uint8_t *pt,
                               size_t ptlen, uint8_t *out, size_t cap, size_t *outlen_r)
{
	size_t need = ptlen + (c->has_key ? MM_NOISE_TAGLEN : 0);

	if (ptlen > MM_NOISE_MAX_MSG || need > MM_NOISE_MAX_MSG || need > cap)
		return -EMSGSIZE;
	if (!c->has_key) {
		memmove(out, pt, ptlen);
		*outlen_r = ptlen;
		return 0;
	}
	if (n == MM_NOISE_NONCE_MAX)
		return -EOVERFLOW;
	if (enc_raw(c->k, n, ad, adlen, pt, ptlen, out) != 0)
		return -EINVAL;
	*outlen_r = need;
	return 0;
}

int mm_noise_cipher_decrypt_at(const struct mm_noise_cipher *c, uint64_t n,
                               const uint8_t *ad, size_t adlen, const uint8_t *ct,
                               size_t ctlen, uint8_t *out, size_t cap, size_t *outlen_r)
{
	uint8_t nonce[12];
	unsigned long long plen = 0;

	if (ctlen > MM_NOISE_MAX_MSG)
		return -EMSGSIZE;
	if (!c->has_key) {
		if (ctlen > cap)
			return -EMSGSIZE;
		memmove(out, ct, ctlen);
		*outlen_r = ctlen;
		return 0;
	}
	if (ctlen < MM_NOISE_TAGLEN)
		return -EBADMSG;
	if (ctlen - MM_NOISE_TAGLEN > cap)
		return -EMSGSIZE;
	if (n == MM_NOISE_NONCE_MAX)
		return -EOVERFLOW;
	nonce_bytes(n, nonce);
	if (crypto_aead_chacha20poly1305_ietf_decrypt(out, &plen, NULL, ct, ctlen, ad, adlen,
	                                              nonce, c->k) != 0)
		return -EBADMSG;
	*outlen_r = (size_t)plen;
	return 0;
}

int mm_noise_cipher_encrypt(struct mm_noise_cipher *c, const uint8_t *ad, size_t adlen,
                            const uint8_t *pt, size_t ptlen, uint8_t *out, size_t cap,
                            size_t *outlen_r)
{
	int rc = mm_noise_cipher_encrypt_at(c, c->n, ad, adlen, pt, ptlen, out, cap, outlen_r);
	if (rc == 0 && c->has_key)
		c->n++;
	return rc;
}

int mm_noise_cipher_decrypt(struct mm_noise_cipher *c, const uint8_t *ad, size_t adlen,
                            const uint8_t *ct, size_t ctlen, uint8_t *out, size_t cap,
                            size_t *outlen_r)
{
	int rc = mm_noise_cipher_decrypt_at(c, c->n, ad, adlen, ct, ctlen, out, cap, outlen_r);
	if (rc == 0 && c->has_key)
		c->n++;
	return rc;
}

void mm_noise_cipher_rekey(struct mm_noise_cipher *c)
{
	uint8_t zeros[32] = { 0 }, out[32 + MM_NOISE_TAGLEN];

	if (!c->has_key)
		return;
	enc_raw(c->k, MM_NOISE_NONCE_MAX, NULL, 0, zeros, sizeof zeros, out);
	memcpy(c->k, out, 32);
	sodium_memzero(out, sizeof out);
}

/* ---- SymmetricState (5.2) --------------------------------------------------------- */

static void mix_hash(struct mm_noise_symmetric *ss, const uint8_t *d, size_t len)
{
	crypto_generichash_state st;
	crypto_generichash_init(&st, NULL, 0, MM_NOISE_HASHLEN);
	crypto_generichash_update(&st, ss->h, MM_NOISE_HASHLEN);
	if (len)
		crypto_generichash_update(&st, d, len);
	crypto_generichash_final(&st, ss->h, MM_NOISE_HASHLEN);
}

static void mix_key(struct mm_noise_symmetric *ss, const uint8_t *ikm, size_t len)
{
	uint8_t k[MM_NOISE_HASHLEN];
	mm_noise_hkdf(ss->ck, ikm, len, ss->ck, k, NULL);
	mm_noise_cipher_init(&ss->cs, k); /* truncated to 32 bytes (HASHLEN 64) */
	sodium_memzero(k, sizeof k);
}

static void mix_key_and_hash(struct mm_noise_symmetric *ss, const uint8_t *ikm, size_t len)
{
	uint8_t th[MM_NOISE_HASHLEN], k[MM_NOISE_HASHLEN];
	mm_noise_hkdf(ss->ck, ikm, len, ss->ck, th, k);
	mix_hash(ss, th, sizeof th);
	mm_noise_cipher_init(&ss->cs, k);
	sodium_memzero(th, sizeof th);
	sodium_memzero(k, sizeof k);
}

/* EncryptAndHash: ciphertext to out (room checked by the caller). */
static int encrypt_and_hash(struct mm_noise_symmetric *ss, const uint8_t *pt, size_t len,
                            uint8_t *out, size_t cap, size_t *outlen_r)
{
	int rc = mm_noise_cipher_encrypt(&ss->cs, ss->h, MM_NOISE_HASHLEN, pt, len, out, cap,
	                                 outlen_r);
	if (rc == 0)
		mix_hash(ss, out, *outlen_r);
	return rc;
}

static int decrypt_and_hash(struct mm_noise_symmetric *ss, const uint8_t *ct, size_t len,
                            uint8_t *out, size_t cap, size_t *outlen_r)
{
	uint8_t h[MM_NOISE_HASHLEN];
	int rc;

	memcpy(h, ss->h, sizeof h); /* ct may alias out: hash the ciphertext first */
	mix_hash(ss, ct, len);
	rc = mm_noise_cipher_decrypt(&ss->cs, h, sizeof h, ct, len, out, cap, outlen_r);
	return rc;
}

/* ---- HandshakeState (5.3) --------------------------------------------------------- */

static int parse_tokens(const char *s, size_t len, uint8_t *toks, size_t max, size_t *n_r)
{
	size_t n = 0, i = 0;
	while (i < len) {
		size_t j = i;
		while (j < len && s[j] != ' ')
			j++;
		size_t w = j - i;
		uint8_t t;
		if (w == 1 && s[i] == 'e')
			t = T_E;
		else if (w == 1 && s[i] == 's')
			t = T_S;
		else if (w == 2 && !memcmp(s + i, "ee", 2))
			t = T_EE;
		else if (w == 2 && !memcmp(s + i, "es", 2))
			t = T_ES;
		else if (w == 2 && !memcmp(s + i, "se", 2))
			t = T_SE;
		else if (w == 2 && !memcmp(s + i, "ss", 2))
			t = T_SS;
		else
			return -EINVAL;
		if (n >= max)
			return -EINVAL;
		toks[n++] = t;
		i = j + 1;
	}
	*n_r = n;
	return 0;
}

/* Splits "Noise_<pattern>_25519_ChaChaPoly_BLAKE2b" and loads the token table with the
 * psk modifiers applied (9.2: psk0 at the start of message 1, pskN at the end of
 * message N).  Returns the number of psk tokens or a negative errno. */
static int load_pattern(struct mm_noise_hs *hs, const char *name, const struct pattern **pat_r)
{
	size_t len = strlen(name);
	if (len < 7 || memcmp(name, "Noise_", 6) != 0)
		return -EINVAL;
	const char *p = name + 6;
	const char *us = memchr(p, '_', len - 6);
	if (us == NULL || us == p)
		return -EINVAL;
	if (strcmp(us, SUITE) != 0)
		return -EPROTONOSUPPORT;
	size_t plen = (size_t)(us - p);
	size_t blen = 0;
	while (blen < plen && !(plen - blen >= 3 && !memcmp(p + blen, "psk", 3)))
		blen++;
	const struct pattern *pat = NULL;
	for (size_t i = 0; i < sizeof patterns / sizeof patterns[0]; i++)
		if (strlen(patterns[i].name) == blen && !memcmp(patterns[i].name, p, blen))
			pat = &patterns[i];
	if (pat == NULL)
		return -EINVAL;

	/* messages */
	const char *m = pat->msgs;
	hs->n_msgs = 0;
	for (;;) {
		const char *bar = strchr(m, '|');
		size_t ml = bar ? (size_t)(bar - m) : strlen(m);
		size_t nt;
		if (hs->n_msgs >= MM_NOISE_MAX_MSGS)
			return -EINVAL;
		if (parse_tokens(m, ml, hs->tokens[hs->n_msgs], MM_NOISE_MAX_TOKENS, &nt) < 0)
			return -EINVAL;
		hs->n_tokens[hs->n_msgs++] = (uint8_t)nt;
		if (!bar)
			break;
		m = bar + 1;
	}

	/* modifiers: "psk0+psk2" */
	int n_psk = 0;
	size_t i = blen;
	while (i < plen) {
		if (n_psk > 0) {
			if (p[i] != '+')
				return -EINVAL;
			i++;
		}
		if (plen - i < 4 || memcmp(p + i, "psk", 3) != 0)
			return -EINVAL;
		i += 3;
		unsigned num = 0;
		size_t digits = 0;
		while (i < plen && p[i] >= '0' && p[i] <= '9' && digits < 2) {
			num = num * 10 + (unsigned)(p[i] - '0');
			i++;
			digits++;
		}
		if (digits == 0 || num > hs->n_msgs || n_psk >= MM_NOISE_MAX_PSKS)
			return -EINVAL;
		unsigned mi = num == 0 ? 0 : num - 1;
		uint8_t nt = hs->n_tokens[mi];
		if (nt >= MM_NOISE_MAX_TOKENS)
			return -EINVAL;
		if (num == 0) {
			memmove(hs->tokens[mi] + 1, hs->tokens[mi], nt);
			hs->tokens[mi][0] = T_PSK;
		} else {
			hs->tokens[mi][nt] = T_PSK;
		}
		hs->n_tokens[mi] = (uint8_t)(nt + 1);
		n_psk++;
	}
	*pat_r = pat;
	return n_psk;
}

static int my_turn(const struct mm_noise_hs *hs)
{
	if (hs->one_way)
		return hs->initiator;
	return (hs->msg_idx % 2 == 0) == (hs->initiator != 0);
}

/* Does side `initiator` ever send token t in this pattern? */
static int sends(const struct mm_noise_hs *hs, int initiator, uint8_t t)
{
	for (unsigned m = 0; m < hs->n_msgs; m++) {
		int by_init = hs->one_way || m % 2 == 0;
		if (by_init != initiator)
			continue;
		for (unsigned k = 0; k < hs->n_tokens[m]; k++)
			if (hs->tokens[m][k] == t)
				return 1;
	}
	return 0;
}

int mm_noise_hs_init(struct mm_noise_hs *hs, const struct mm_noise_config *cfg)
{
	const struct pattern *pat = NULL;
	int rc;
	size_t nlen;

	memset(hs, 0, sizeof *hs);
	if (cfg == NULL || cfg->protocol == NULL ||
	    (cfg->prologue == NULL && cfg->prologue_len > 0)) {
		rc = -EINVAL;
		goto fail;
	}
	rc = load_pattern(hs, cfg->protocol, &pat);
	if (rc < 0)
		goto fail;
	if ((size_t)rc != cfg->n_psks || (cfg->n_psks > 0 && cfg->psks == NULL)) {
		rc = -EINVAL;
		goto fail;
	}
	hs->n_psks = (uint8_t)rc;
	hs->psk_mode = rc > 0;
	for (size_t i = 0; i < cfg->n_psks; i++)
		memcpy(hs->psks[i], cfg->psks[i], 32);
	hs->initiator = cfg->initiator ? 1 : 0;
	hs->one_way = strlen(pat->name) == 1;

	/* keys the pattern needs */
	const char *my_pre = hs->initiator ? pat->pre_i : pat->pre_r;
	const char *their_pre = hs->initiator ? pat->pre_r : pat->pre_i;
	if (cfg->s) {
		memcpy(hs->s_priv, cfg->s, 32);
		crypto_scalarmult_base(hs->s_pub, hs->s_priv);
		hs->has_s = 1;
	} else if (strchr(my_pre, 's') || sends(hs, hs->initiator, T_S)) {
		rc = -EINVAL;
		goto fail;
	}
	if (cfg->e) {
		memcpy(hs->e_priv, cfg->e, 32);
		crypto_scalarmult_base(hs->e_pub, hs->e_priv);
		hs->has_e = 1;
	} else if (strchr(my_pre, 'e') || sends(hs, hs->initiator, T_E)) {
		rc = -EINVAL;
		goto fail;
	}
	if (strchr(their_pre, 's')) {
		if (cfg->rs == NULL) {
			rc = -EINVAL;
			goto fail;
		}
		memcpy(hs->rs, cfg->rs, 32);
		hs->has_rs = 1;
	}
	if (strchr(their_pre, 'e')) {
		if (cfg->re == NULL) {
			rc = -EINVAL;
			goto fail;
		}
		memcpy(hs->re, cfg->re, 32);
		hs->has_re = 1;
	}

	/* InitializeSymmetric(protocol_name) */
	nlen = strlen(cfg->protocol);
	if (nlen <= MM_NOISE_HASHLEN)
		memcpy(hs->ss.h, cfg->protocol, nlen);
	else
		crypto_generichash(hs->ss.h, MM_NOISE_HASHLEN, (const uint8_t *)cfg->protocol,
		                   nlen, NULL, 0);
	memcpy(hs->ss.ck, hs->ss.h, MM_NOISE_HASHLEN);
	mm_noise_cipher_init(&hs->ss.cs, NULL);
	mix_hash(&hs->ss, cfg->prologue, cfg->prologue_len);

	/* pre-messages: initiator's keys first (7.1) */
	for (int side = 1; side >= 0; side--) {
		const char *pre = side ? pat->pre_i : pat->pre_r;
		int mine = side == hs->initiator;
		for (const char *c = pre; *c; c++) {
			if (*c == 'e') {
				const uint8_t *k = mine ? hs->e_pub : hs->re;
				mix_hash(&hs->ss, k, 32);
				if (hs->psk_mode)
					mix_key(&hs->ss, k, 32);
			} else if (*c == 's') {
				mix_hash(&hs->ss, mine ? hs->s_pub : hs->rs, 32);
			}
		}
	}
	return 0;
fail:
	mm_noise_hs_wipe(hs);
	return rc;
}

enum mm_noise_hs_state mm_noise_hs_state(const struct mm_noise_hs *hs)
{
	if (hs->msg_idx >= hs->n_msgs)
		return MM_NOISE_HS_SPLIT;
	return my_turn(hs) ? MM_NOISE_HS_WRITE : MM_NOISE_HS_READ;
}

/* DH for the token: which local private key with which remote public key. */
static int dh_token(struct mm_noise_hs *hs, uint8_t t, uint8_t out[32])
{
	const uint8_t *priv, *pub;
	int init = hs->initiator;
	switch (t) {
	case T_EE: priv = hs->e_priv; pub = hs->re; if (!hs->has_e || !hs->has_re) return -EINVAL; break;
	case T_ES: /* initiator's e with responder's s */
		if (init) { priv = hs->e_priv; pub = hs->rs; if (!hs->has_e || !hs->has_rs) return -EINVAL; }
		else { priv = hs->s_priv; pub = hs->re; if (!hs->has_s || !hs->has_re) return -EINVAL; }
		break;
	case T_SE: /* initiator's s with responder's e */
		if (init) { priv = hs->s_priv; pub = hs->re; if (!hs->has_s || !hs->has_re) return -EINVAL; }
		else { priv = hs->e_priv; pub = hs->rs; if (!hs->has_e || !hs->has_rs) return -EINVAL; }
		break;
	case T_SS: priv = hs->s_priv; pub = hs->rs; if (!hs->has_s || !hs->has_rs) return -EINVAL; break;
	default: return -EINVAL;
	}
	/* libsodium refuses an all-zero result (low-order point): treat as invalid. */
	if (crypto_scalarmult(out, priv, pub) != 0)
		return -EINVAL;
	return 0;
}

int mm_noise_hs_write(struct mm_noise_hs *hs, const uint8_t *payload, size_t plen,
                      uint8_t *out, size_t cap, size_t *outlen_r)
{
	struct mm_noise_hs w; /* work copy: committed only on success */
	uint8_t dh[32];
	size_t pos = 0, n;
	int rc;

	if (hs->msg_idx >= hs->n_msgs || !my_turn(hs))
		return -EPROTO;
	if (cap > MM_NOISE_MAX_MSG)
		cap = MM_NOISE_MAX_MSG;
	memcpy(&w, hs, sizeof w);
	const uint8_t *toks = w.tokens[w.msg_idx];
	for (unsigned i = 0; i < w.n_tokens[w.msg_idx]; i++) {
		switch (toks[i]) {
		case T_E: /* e */
			if (cap - pos < 32) { rc = -EMSGSIZE; goto out; }
			memcpy(out + pos, w.e_pub, 32);
			pos += 32;
			mix_hash(&w.ss, w.e_pub, 32);
			if (w.psk_mode)
				mix_key(&w.ss, w.e_pub, 32);
			break;
		case T_S: /* s */
			rc = encrypt_and_hash(&w.ss, w.s_pub, 32, out + pos, cap - pos, &n);
			if (rc < 0)
				goto out;
			pos += n;
			break;
		case T_EE: /* ee */
		case T_ES: /* es */
		case T_SE: /* se */
		case T_SS: /* ss */
			rc = dh_token(&w, toks[i], dh);
			if (rc < 0)
				goto out;
			mix_key(&w.ss, dh, 32);
			break;
		case T_PSK: /* psk */
			mix_key_and_hash(&w.ss, w.psks[w.psk_idx], 32);
			w.psk_idx++;
			break;
		}
	}
	rc = encrypt_and_hash(&w.ss, payload, plen, out + pos, cap - pos, &n);
	if (rc < 0)
		goto out;
	pos += n;
	w.msg_idx++;
	memcpy(hs, &w, sizeof w);
	*outlen_r = pos;
	rc = 0;
out:
	sodium_memzero(&w, sizeof w);
	sodium_memzero(dh, sizeof dh);
	return rc;
}

int mm_noise_hs_read(struct mm_noise_hs *hs, const uint8_t *msg, size_t len,
                     uint8_t *payload_r, size_t cap, size_t *plen_r)
{
	struct mm_noise_hs w; /* work copy: committed only on success */
	uint8_t dh[32], tmp[32];
	size_t pos = 0, n;
	int rc;

	if (hs->msg_idx >= hs->n_msgs || my_turn(hs))
		return -EPROTO;
	if (len > MM_NOISE_MAX_MSG)
		return -EMSGSIZE;
	memcpy(&w, hs, sizeof w);
	const uint8_t *toks = w.tokens[w.msg_idx];
	for (unsigned i = 0; i < w.n_tokens[w.msg_idx]; i++) {
		switch (toks[i]) {
		case T_E: /* e */
			if (len - pos < 32) { rc = -EBADMSG; goto out; }
			memcpy(w.re, msg + pos, 32);
			w.has_re = 1;
			pos += 32;
			mix_hash(&w.ss, w.re, 32);
			if (w.psk_mode)
				mix_key(&w.ss, w.re, 32);
			break;
		case T_S: { /* s */
			size_t sl = 32 + (w.ss.cs.has_key ? MM_NOISE_TAGLEN : 0);
			if (len - pos < sl) { rc = -EBADMSG; goto out; }
			rc = decrypt_and_hash(&w.ss, msg + pos, sl, tmp, sizeof tmp, &n);
			if (rc < 0)
				goto out;
			memcpy(w.rs, tmp, 32);
			w.has_rs = 1;
			pos += sl;
			break;
		}
		case T_EE: /* ee */
		case T_ES: /* es */
		case T_SE: /* se */
		case T_SS: /* ss */
			rc = dh_token(&w, toks[i], dh);
			if (rc < 0) { rc = -EBADMSG; goto out; }
			mix_key(&w.ss, dh, 32);
			break;
		case T_PSK: /* psk */
			mix_key_and_hash(&w.ss, w.psks[w.psk_idx], 32);
			w.psk_idx++;
			break;
		}
	}
	rc = decrypt_and_hash(&w.ss, msg + pos, len - pos, payload_r, cap, &n);
	if (rc < 0)
		goto out;
	w.msg_idx++;
	memcpy(hs, &w, sizeof w);
	*plen_r = n;
	rc = 0;
out:
	sodium_memzero(&w, sizeof w);
	sodium_memzero(dh, sizeof dh);
	sodium_memzero(tmp, sizeof tmp);
	return rc;
}

const uint8_t *mm_noise_hs_remote_static(const struct mm_noise_hs *hs)
{
	return hs->has_rs ? hs->rs : NULL;
}

const uint8_t *mm_noise_hs_hash(const struct mm_noise_hs *hs)
{
	return hs->ss.h;
}

int mm_noise_hs_split(struct mm_noise_hs *hs, struct mm_noise_cipher *c1,
                      struct mm_noise_cipher *c2, uint8_t h_r[MM_NOISE_HASHLEN])
{
	uint8_t k1[MM_NOISE_HASHLEN], k2[MM_NOISE_HASHLEN];

	if (hs->msg_idx < hs->n_msgs || hs->n_msgs == 0)
		return -EPROTO;
	mm_noise_hkdf(hs->ss.ck, NULL, 0, k1, k2, NULL);
	mm_noise_cipher_init(c1, k1);
	mm_noise_cipher_init(c2, k2);
	if (h_r)
		memcpy(h_r, hs->ss.h, MM_NOISE_HASHLEN);
	sodium_memzero(k1, sizeof k1);
	sodium_memzero(k2, sizeof k2);
	mm_noise_hs_wipe(hs);
	return 0;
}

void mm_noise_hs_wipe(struct mm_noise_hs *hs)
{
	sodium_memzero(hs, sizeof *hs);
}
