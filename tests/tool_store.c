/*
 * tool_store.c — build/tests/store: drives node/store.c from test scripts.
 *
 *   store scan LOC STATE            scan + commit; prints each changed record:
 *       MSG <user> <folder> <size> <flags DFPRST letters or -> <keywords,or -> uid=<n>
 *       TOMB <user>
 *       FOLDER <user> <name> exists=<0|1> sub=<0|1>
 *   store sync LOC_A STATE_A LOC_B STATE_B
 *       scans both, then exchanges full state both ways through mm_store_merge and the
 *       missing bodies through body_open/body_begin (what peers do over the network),
 *       commits both; prints "synced <records> <bodies>".
 * Node ids: 1 for A (and scan), 2 for B.  Exit 0 on success, 1 on failure.
 */
#include "crdt/crdt.h"
#include "node/store.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static void log_fn(void *arg, int level, const char *fmt, ...)
{
	(void)arg;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "store[%d]: ", level);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static uint64_t now_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

struct node {
	struct mm_state *st;
	struct mm_clock clock;
	struct mm_store *s;
};

static int node_open(struct node *n, const char *loc, const char *state, uint64_t id)
{
	n->st = mm_state_new();
	mm_clock_init(&n->clock, id, 0);
	struct mm_store_config cfg = {.mail_location = loc, .state_dir = state};
	char err[512];
	if (mm_store_open(&n->s, &cfg, n->st, &n->clock, err, sizeof err) < 0) {
		fprintf(stderr, "store: %s\n", err);
		return -1;
	}
	mm_store_set_log(n->s, log_fn, NULL);
	return 0;
}

static void node_close(struct node *n)
{
	mm_store_free(&n->s);
	mm_state_free(&n->st);
}

static void print_rec(const char *user, const struct mm_rec *r)
{
	if (r->type == MM_REC_MESSAGE) {
		char fl[8] = {0};
		int k = 0;
		for (int f = 0; f < MM_FLAG_COUNT; f++)
			if (r->msg.flags[f].value)
				fl[k++] = mm_flag_letters[f];
		printf("MSG %s %s %llu %s ", user, r->msg.folder, (unsigned long long)r->msg.size, k ? fl : "-");
		int any = 0;
		for (size_t i = 0; i < r->msg.n_keywords; i++)
			if (r->msg.keywords[i].reg.value)
				printf("%s%s", any++ ? "," : "", r->msg.keywords[i].name);
		printf("%s uid=%u\n", any ? "" : "-", r->msg.uid_value);
	} else if (r->type == MM_REC_EXPUNGED) {
		printf("TOMB %s\n", user);
	} else if (r->type == MM_REC_FOLDER) {
		printf("FOLDER %s %s exists=%d sub=%d\n", user, r->folder.name, r->folder.exists.value,
		       r->folder.subscribed.value);
	}
}

static int cmd_scan(const char *loc, const char *state)
{
	struct node n;
	if (node_open(&n, loc, state, 1) < 0)
		return 1;
	struct mm_delta *d = mm_delta_new();
	int r = mm_store_scan(n.s, now_ms(), d);
	if (r >= 0)
		r = mm_store_commit(n.s);
	for (size_t i = 0; r >= 0 && i < mm_delta_count(d); i++) {
		const char *user;
		const struct mm_rec *rec = mm_delta_get(d, i, &user);
		print_rec(user, rec);
	}
	mm_delta_free(&d);
	node_close(&n);
	return r < 0;
}

struct rec_ctx {
	struct mm_delta *d;
	const char *user;
};

static int add_rec(void *arg, const struct mm_rec *r)
{
	struct rec_ctx *c = arg;
	return mm_delta_add(c->d, c->user, r) < 0;
}

static int add_user(void *arg, struct mm_user *u)
{
	struct rec_ctx c = {arg, mm_user_name(u)};
	return mm_user_foreach(u, NULL, 0, add_rec, &c);
}

struct xfer {
	struct node *from, *to;
	int n, err;
};

static int fetch(void *arg, const char *user, const uint8_t key[MM_KEY_LEN],
                 const uint8_t body[MM_ID_LEN], uint64_t size)
{
	(void)size;
	struct xfer *x = arg;
	int fd;
	uint64_t sz;
	if (mm_store_body_open_id(x->from->s, user, body, &fd, &sz) < 0)
		return 0;
	struct mm_body_writer *w;
	if (mm_store_body_begin(x->to->s, user, key, &w) < 0) {
		close(fd);
		return 0;
	}
	char buf[65536];
	ssize_t r;
	while ((r = read(fd, buf, sizeof buf)) > 0)
		if (mm_store_body_write(w, buf, (size_t)r) < 0)
			break;
	close(fd);
	int c = mm_store_body_commit(&w);
	if (c < 0)
		x->err++;
	else
		x->n += c;
	return 0;
}

static int push(struct node *from, struct node *to, int *recs, int *bodies)
{
	struct mm_delta *d = mm_delta_new();
	if (mm_state_foreach(from->st, NULL, 0, add_user, d) != 0)
		return -1;
	int r = mm_store_merge_delta(to->s, d);
	mm_delta_free(&d);
	if (r < 0 || mm_store_commit(to->s) < 0)
		return -1;
	*recs += r;
	struct xfer x = {from, to, 0, 0};
	mm_store_missing(to->s, fetch, &x);
	*bodies += x.n;
	return (x.err || mm_store_commit(to->s) < 0) ? -1 : 0;
}

static int cmd_sync(const char *la, const char *sa, const char *lb, const char *sb)
{
	struct node a, b;
	if (node_open(&a, la, sa, 1) < 0)
		return 1;
	if (node_open(&b, lb, sb, 2) < 0) {
		node_close(&a);
		return 1;
	}
	int rc = 1, recs = 0, bodies = 0;
	if (mm_store_scan(a.s, now_ms(), NULL) >= 0 && mm_store_commit(a.s) == 0 &&
	    mm_store_scan(b.s, now_ms(), NULL) >= 0 && mm_store_commit(b.s) == 0 &&
	    push(&a, &b, &recs, &bodies) == 0 && push(&b, &a, &recs, &bodies) == 0)
		rc = 0;
	printf("synced %d %d\n", recs, bodies);
	node_close(&a);
	node_close(&b);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "scan"))
		return cmd_scan(argv[2], argv[3]);
	if (argc == 6 && !strcmp(argv[1], "sync"))
		return cmd_sync(argv[2], argv[3], argv[4], argv[5]);
	fprintf(stderr, "usage: store scan LOC STATE | store sync LOC_A STATE_A LOC_B STATE_B\n");
	return 2;
}
