/*
 * fuzz_maildir.c — libFuzzer target for the parsers of what a Maildir holds
 * (node/maildir.c): message file names, dovecot-uidlist, dovecot-keywords and
 * subscriptions.  Dovecot and mailmesh write these files, but parts of them come from
 * IMAP clients (folder and keyword names) and a crash or a hand edit can leave anything
 * in them, so every input goes through every parser, and what parses must keep the
 * promises the store relies on:
 *  - a message name formats back (letters in order) to a name that parses the same;
 *  - a dovecot-uidlist gives records in ascending UID order below next_uid, each found
 *    by its base name and by its UID, also after records are added (the input's lines
 *    as names, as the store adds the files it finds) and removed; formatted and parsed
 *    again, it gives the same list, or the next load would renumber mail;
 *  - a dovecot-keywords entry is a name Dovecot can store, found at its own letter;
 *  - subscriptions and the record walk give non-empty names without line breaks.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "node/maildir.h"

#define check(c) do { if (!(c)) abort(); } while (0)

static char *text_of(const uint8_t *data, size_t size)
{
	char *t = malloc(size + 1);
	check(t);
	memcpy(t, data, size);
	t[size] = 0;
	return t;
}

static void fuzz_name(const uint8_t *data, size_t size)
{
	char *nm = text_of(data, size);
	struct mm_md_name n, n2;
	if (mm_md_name_parse(nm, &n) == 0) {
		check(n.base == nm && n.base_len > 0 && !memchr(n.base, ':', n.base_len));
		check(n.has_info || n.letters == 0);
		char buf[MM_MD_NAME_MAX + 1];
		/* never longer than the name it came from, so it fits */
		int l = mm_md_name_format(buf, sizeof buf, n.base, n.base_len, n.letters, n.has_info);
		check(l > 0 && (size_t)l <= strlen(nm) && buf[l] == 0);
		check(mm_md_name_parse(buf, &n2) == 0);
		check(n2.base_len == n.base_len && memcmp(n2.base, n.base, n.base_len) == 0);
		check(n2.letters == n.letters && n2.has_info == n.has_info);
		check(n2.has_size == n.has_size && n2.size == n.size);
		check(n2.has_vsize == n.has_vsize && n2.vsize == n.vsize);
	}
	char out[MM_MD_NAME_MAX + 1];
	int l = mm_md_unescape((const char *)data, size, out, sizeof out);
	check(l == -ENAMETOOLONG || (l >= 0 && (size_t)l <= size && out[l] == 0));
	free(nm);
}

static void fuzz_keywords(const uint8_t *data, size_t size)
{
	char *t = text_of(data, size);
	struct mm_md_keywords kw;
	int r = mm_md_keywords_parse(t, &kw);
	check(r == 0 || r == -ENOMEM);
	for (int i = 0; r == 0 && i < MM_MD_KEYWORDS_MAX; i++) {
		const char *k = kw.names[i];
		if (!k)
			continue;
		size_t l = strlen(k);
		check(l > 0 && l <= 255);
		for (size_t j = 0; j < l; j++)
			check((unsigned char)k[j] > ' ' && k[j] != 0x7f);
		/* (names are found without regard to case, the first line first, as Dovecot) */
		int f = mm_md_keywords_find(&kw, k);
		check(f >= 0 && f <= i && strcasecmp(kw.names[f], k) == 0);
	}
	mm_md_keywords_clear(&kw);
	free(t);
}

static int name_cb(void *arg, const char *folder)
{
	(void)arg;
	check(folder[0] && !strchr(folder, '\n'));
	return 0;
}

static int rec_cb(void *arg, uint32_t uid, const char *base, size_t base_len)
{
	(void)arg;
	check(uid > 0 && base_len > 0);
	check(!memchr(base, ':', base_len) && !memchr(base, '\r', base_len) && !memchr(base, '\n', base_len));
	return 0;
}

/* The promises of a list, loaded or edited. */
static void check_list(const struct mm_md_uidlist *ul)
{
	check(ul->next_uid >= 1);
	uint32_t prev = 0;
	for (size_t i = 0; i < ul->n; i++) {
		const struct mm_md_uident *e = &ul->v[i];
		check(e->uid > prev);
		prev = e->uid;
		check(e->uid < ul->next_uid || ul->next_uid == UINT32_MAX);
		check(e->base_len == strcspn(e->name, ":"));
		check(mm_md_uidlist_index(ul, e->uid) == (ssize_t)i);
		/* two records may share a base in a damaged file: either UID will do */
		uint32_t u = mm_md_uidlist_find(ul, e->name, e->base_len);
		ssize_t at = u ? mm_md_uidlist_index(ul, u) : -1;
		check(at >= 0 && ul->v[at].base_len == e->base_len &&
		      memcmp(ul->v[at].name, e->name, e->base_len) == 0);
	}
}

static void fuzz_uidlist(const uint8_t *data, size_t size)
{
	char *t = text_of(data, size);
	struct mm_md_uidlist ul, again;
	int r = mm_md_uidlist_parse(t, &ul);
	check(r == 0 || r == -EBADMSG || r == -ENOMEM);
	check(ul.exists);
	if (r == -ENOMEM)
		goto out;
	check_list(&ul);

	/* the store adds the files it finds, under new UIDs, and removes gone ones */
	free(t);
	t = text_of(data, size);
	char *save = NULL;
	unsigned k = 0;
	for (char *line = strtok_r(t, "\n", &save); line && k < 64; line = strtok_r(NULL, "\n", &save), k++) {
		if (ul.next_uid == UINT32_MAX)
			break;
		uint32_t uid = ul.next_uid;
		int ar = mm_md_uidlist_add(&ul, uid, line);
		check(ar == 0 || ar == -EINVAL || ar == -ENOMEM);
		if (ar == 0)
			check(mm_md_uidlist_find(&ul, line, strcspn(line, ":")) == uid);
		if (k % 3 == 2 && ul.n)
			mm_md_uidlist_remove(&ul, ul.v[(k * 7) % ul.n].uid);
	}
	check_list(&ul);

	/* saved and loaded again, it is the same list */
	if (!ul.uidvalidity)
		ul.uidvalidity = 1;
	char *text;
	size_t len;
	if (mm_md_uidlist_format(&ul, &text, &len) == 0) {
		check(strlen(text) == len);
		r = mm_md_uidlist_parse(text, &again);
		check(r == 0 || r == -ENOMEM);
		if (r == 0) {
			check(again.uidvalidity == ul.uidvalidity && again.next_uid == ul.next_uid);
			check(strcmp(again.hdr_rest, ul.hdr_rest ? ul.hdr_rest : "") == 0);
			check(again.n == ul.n);
			for (size_t i = 0; i < ul.n; i++) {
				check(again.v[i].uid == ul.v[i].uid);
				check(strcmp(again.v[i].ext, ul.v[i].ext) == 0);
				check(strcmp(again.v[i].name, ul.v[i].name) == 0);
			}
		}
		mm_md_uidlist_clear(&again);
		free(text);
	}
out:
	mm_md_uidlist_clear(&ul);
	free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_name(data, size);
	fuzz_keywords(data, size);
	fuzz_uidlist(data, size);

	char *t = text_of(data, size);
	check(mm_md_subs_parse(t, name_cb, NULL) == 0);
	free(t);
	t = text_of(data, size);
	check(mm_md_uidlist_parse_each(t, rec_cb, NULL) == 0);
	free(t);
	return 0;
}
