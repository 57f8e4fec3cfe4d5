/*
 * tool_bench_mkmail.c — writes a synthetic Maildir quickly for the benchmarks (issue 6):
 * N messages of MIN..MAX bytes (log-uniform) into DIR/cur (DIR/new and DIR/tmp are created too),
 * named as Dovecot names them (`<time>.M<n>P<pid>.bench,S=<size>:2,S`), with an mtime
 * (INTERNALDATE) per message.  Content and names depend only on SEED and the index, so
 * two runs with the same arguments write byte-identical Maildirs (the idle and size
 * benchmarks write the same store into each node before starting it).  Files are not
 * fsynced (they are test data; the benchmark syncs the filesystem once afterwards).
 *
 * Usage: bench_mkmail DIR N MIN MAX SEED [UID GID]
 *   When UID and GID are given, DIR's directories and files are chowned to them.
 * Prints `wrote N messages, B bytes` and exits 0; 1 on an I/O error (named on stderr);
 * 2 on a usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

static uint64_t mix(uint64_t z)
{
	z += 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static int mkdir_p(const char *path, int uid, int gid)
{
	char buf[4096];
	if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
		return -ENAMETOOLONG;
	for (char *p = buf + 1;; p++) {
		if (*p == '/' || *p == '\0') {
			char c = *p;
			*p = '\0';
			if (mkdir(buf, 0700) != 0 && errno != EEXIST)
				return -errno;
			if (uid >= 0 && chown(buf, (uid_t)uid, (gid_t)gid) != 0)
				return -errno;
			*p = c;
			if (c == '\0')
				break;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 6 && argc != 8) {
		fprintf(stderr, "usage: bench_mkmail DIR N MIN MAX SEED [UID GID]\n");
		return 2;
	}
	const char *dir = argv[1];
	unsigned long n = strtoul(argv[2], NULL, 0);
	size_t mn = strtoul(argv[3], NULL, 0), mx = strtoul(argv[4], NULL, 0);
	uint64_t seed = strtoull(argv[5], NULL, 0);
	int uid = argc == 8 ? atoi(argv[6]) : -1, gid = argc == 8 ? atoi(argv[7]) : -1;
	if (mn < 200 || mx < mn) {
		fprintf(stderr, "bench_mkmail: need 200 <= MIN <= MAX\n");
		return 2;
	}
	char path[4096];
	const char *subs[] = { "cur", "new", "tmp" };
	for (int i = 0; i < 3; i++) {
		snprintf(path, sizeof path, "%s/%s", dir, subs[i]);
		int rc = mkdir_p(path, uid, gid);
		if (rc < 0) {
			fprintf(stderr, "bench_mkmail: mkdir %s: %s\n", path, strerror(-rc));
			return 1;
		}
	}
	char *buf = malloc(mx + 1);
	if (!buf)
		return 1;
	static const char line[] = "The quick brown fox jumps over the lazy dog. 0123456789 abcdefghij\r\n";
	uint64_t total = 0;
	for (unsigned long i = 0; i < n; i++) {
		uint64_t r = mix(seed * 0x100000001b3ull + i);
		/* log-uniform in [MIN, MAX]: many small messages, few large ones, as real mail
		 * (2..64 KB gives about 18 KB a message on average) */
		double u = (double)(r & 0xffffff) / (double)0x1000000;
		size_t size = (size_t)((double)mn * pow((double)mx / (double)mn, u));
		if (size < mn)
			size = mn;
		if (size > mx)
			size = mx;
		int64_t t = 1600000000 + (int64_t)(r >> 40) % 100000000;
		int h = snprintf(buf, mx + 1,
		                 "From: sender%lu@example.net\r\nTo: alice@example.org\r\n"
		                 "Subject: bench message %lu\r\nMessage-ID: <%lu.%016llx@example.net>\r\n"
		                 "Date: Sun, 29 Nov 2026 05:00:00 +0000\r\n\r\n",
		                 i, i, i, (unsigned long long)r);
		size_t off = (size_t)h < size ? (size_t)h : size;
		while (off < size) {
			size_t k = sizeof line - 1 < size - off ? sizeof line - 1 : size - off;
			memcpy(buf + off, line, k);
			off += k;
		}
		/* a per-message token in the last bytes keeps bodies distinct even when cut */
		if (size >= 20)
			snprintf(buf + size - 20, 21, "%018llx\r\n", (unsigned long long)(r ^ i));
		snprintf(path, sizeof path, "%s/cur/%lld.M%luP%llu.bench,S=%zu:2,S", dir, (long long)t, i,
		         (unsigned long long)(seed % 100000), size);
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd < 0 || write(fd, buf, size) != (ssize_t)size) {
			fprintf(stderr, "bench_mkmail: %s: %s\n", path, strerror(errno));
			return 1;
		}
		struct timespec ts[2] = { { t, 0 }, { t, 0 } };
		if (futimens(fd, ts) != 0 || (uid >= 0 && fchown(fd, (uid_t)uid, (gid_t)gid) != 0) ||
		    close(fd) != 0) {
			fprintf(stderr, "bench_mkmail: %s: %s\n", path, strerror(errno));
			return 1;
		}
		total += size;
	}
	free(buf);
	printf("wrote %lu messages, %llu bytes\n", n, (unsigned long long)total);
	return 0;
}
