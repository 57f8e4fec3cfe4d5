/*
 * keyfile.c — secret key files (see keyfile.h): the permission check on load, and
 * writes that are 0600 from the first byte and never leave a half-written key.
 */
#include "node/keyfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "proto/channel.h"

static void seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

int mm_keyfile_load(const char *path, uint8_t key_r[32], char *err, size_t errlen)
{
	char buf[256];
	size_t n = 0, a, b;
	struct stat st;
	int fd, rc;

	memset(key_r, 0, 32);
	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (path == NULL)
		return -EINVAL;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		rc = -errno;
		seterr(err, errlen, "%s: cannot open key file: %s", path, strerror(errno));
		return rc;
	}
	if (fstat(fd, &st) != 0) {
		rc = -errno;
		seterr(err, errlen, "%s: %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		seterr(err, errlen, "%s: not a regular file; a key file holds one base64 key", path);
		rc = -EINVAL;
		goto out;
	}
	if ((st.st_mode & 077) != 0) {
		seterr(err, errlen,
		       "%s: key file is accessible by group or others (mode %04o); "
		       "fix with: chmod 600 %s", path, (unsigned)(st.st_mode & 07777), path);
		rc = -EPERM;
		goto out;
	}
	for (;;) {
		ssize_t r = read(fd, buf + n, sizeof buf - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = -errno;
			seterr(err, errlen, "%s: read: %s", path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n == sizeof buf)
			break;
	}
	a = 0;
	b = n;
	while (a < b && is_space(buf[a]))
		a++;
	while (b > a && is_space(buf[b - 1]))
		b--;
	if (n == sizeof buf || mm_key_from_base64(buf + a, b - a, key_r) != 0) {
		seterr(err, errlen,
		       "%s: not a key: expected one line with the 44-character base64 key that "
		       "`mailmesh genkey` writes", path);
		rc = -EINVAL;
		goto out;
	}
	rc = 0;
out:
	sodium_memzero(buf, sizeof buf);
	close(fd);
	return rc;
}

int mm_keyfile_write(const char *path, const uint8_t key[32], bool force, char *err, size_t errlen)
{
	char text[MM_KEY_B64_LEN + 2];
	char *tmp = NULL;
	struct stat st;
	int fd = -1, rc;

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (path == NULL || key == NULL)
		return -EINVAL;
	if (!force && lstat(path, &st) == 0) {
		seterr(err, errlen, "%s: file exists; not overwriting a key (use --force to replace it)", path);
		return -EEXIST;
	}
	if (asprintf(&tmp, "%s.tmp.XXXXXX", path) < 0) {
		tmp = NULL;
		rc = -ENOMEM;
		seterr(err, errlen, "%s: out of memory", path);
		goto out;
	}
	fd = mkstemp(tmp); /* created 0600 */
	if (fd < 0) {
		rc = -errno;
		seterr(err, errlen, "%s: cannot create: %s", path, strerror(errno));
		free(tmp);
		tmp = NULL;
		goto out;
	}
	if (fchmod(fd, 0600) != 0) {
		rc = -errno;
		seterr(err, errlen, "%s: chmod: %s", path, strerror(errno));
		goto out;
	}
	mm_key_to_base64(key, text);
	text[MM_KEY_B64_LEN] = '\n';
	for (size_t off = 0; off < sizeof text - 1;) {
		ssize_t w = write(fd, text + off, sizeof text - 1 - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			rc = w < 0 ? -errno : -EIO;
			seterr(err, errlen, "%s: write: %s", path, strerror(-rc));
			goto out;
		}
		off += (size_t)w;
	}
	if (fsync(fd) != 0 || close(fd) != 0) {
		fd = -1;
		rc = -errno;
		seterr(err, errlen, "%s: write: %s", path, strerror(-rc));
		goto out;
	}
	fd = -1;
	/* Without --force, link() fails if the name appeared meanwhile: never clobber. */
	if (force ? rename(tmp, path) != 0 : link(tmp, path) != 0) {
		rc = -errno;
		if (rc == -EEXIST)
			seterr(err, errlen, "%s: file exists; not overwriting a key (use --force to replace it)", path);
		else
			seterr(err, errlen, "%s: %s", path, strerror(-rc));
		goto out;
	}
	if (!force)
		unlink(tmp);
	free(tmp);
	tmp = NULL;
	rc = 0;
out:
	sodium_memzero(text, sizeof text);
	if (fd >= 0)
		close(fd);
	if (tmp != NULL) {
		unlink(tmp);
		free(tmp);
	}
	return rc;
}
