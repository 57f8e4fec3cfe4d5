/*
 * cmd_keys.c — `mailmesh genkey` and `mailmesh pubkey`, as `wg genkey` / `wg pubkey`:
 * keys travel as one line of 44-character base64.  Randomness comes from libsodium's
 * randombytes_buf() (the kernel's CSPRNG) here in node/, never in proto/.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "node/cmds.h"
#include "node/keyfile.h"
#include "proto/channel.h"

static int genkey_usage(FILE *f)
{
	fprintf(f, "usage: mailmesh genkey [-o FILE [--force]]\n"
	           "  prints a new private key, or writes it to FILE with mode 0600\n"
	           "  (an existing FILE is kept unless --force)\n");
	return f == stdout ? 0 : 2;
}

int mm_cmd_genkey(int argc, char **argv)
{
	const char *out = NULL;
	bool force = false;
	uint8_t key[32];
	char text[MM_KEY_B64_LEN + 1];
	char err[512];
	int rc = 1;

	for (int i = 1; i < argc; i++) {
		if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "--output")) && i + 1 < argc)
			out = argv[++i];
		else if (!strcmp(argv[i], "-f") || !strcmp(argv[i], "--force"))
			force = true;
		else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			return genkey_usage(stdout);
		} else {
			fprintf(stderr, "mailmesh genkey: %s '%s'\n",
			        !strcmp(argv[i], "-o") || !strcmp(argv[i], "--output") ? "a FILE must follow" : "unknown argument",
			        argv[i]);
			return genkey_usage(stderr);
		}
	}
	if (force && out == NULL)
		return genkey_usage(stderr);
	if (sodium_init() < 0) {
		fprintf(stderr, "mailmesh genkey: libsodium failed to initialise\n");
		return 1;
	}
	randombytes_buf(key, sizeof key);
	mm_key_generate(key, key);
	if (out != NULL) {
		int r = mm_keyfile_write(out, key, force, err, sizeof err);
		if (r < 0) {
			fprintf(stderr, "mailmesh genkey: %s\n", err);
			rc = r == -EEXIST ? 2 : 1;
			goto out;
		}
	} else {
		mm_key_to_base64(key, text);
		if (printf("%s\n", text) < 0 || fflush(stdout) != 0) {
			fprintf(stderr, "mailmesh genkey: cannot write to stdout: %s\n", strerror(errno));
			goto out;
		}
	}
	rc = 0;
out:
	sodium_memzero(key, sizeof key);
	sodium_memzero(text, sizeof text);
	return rc;
}

int mm_cmd_pubkey(int argc, char **argv)
{
	char buf[256];
	size_t n = 0, a, b;
	uint8_t priv[32], pub[32];
	char text[MM_KEY_B64_LEN + 1];
	int rc = 2;

	(void)argv;
	if (argc > 1) {
		bool help = !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help");
		/* `mailmesh pubkey private.key` is the usual slip: the key comes on stdin */
		if (!help)
			fprintf(stderr, "mailmesh pubkey: takes no argument ('%s'); the private key is read on stdin: "
			        "mailmesh pubkey < %s\n", argv[1], argv[1][0] == '-' ? "PRIVATE_KEY" : argv[1]);
		fprintf(help ? stdout : stderr, "usage: mailmesh pubkey < PRIVATE_KEY\n"
		                "  reads a private key on stdin and prints its public key\n");
		return help ? 0 : 2;
	}
	while (n < sizeof buf) {
		ssize_t r = read(0, buf + n, sizeof buf - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			fprintf(stderr, "mailmesh pubkey: cannot read stdin: %s\n", strerror(errno));
			rc = 1;
			goto out;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	a = 0;
	b = n;
	while (a < b && strchr(" \t\r\n", buf[a]) != NULL && buf[a] != '\0')
		a++;
	while (b > a && strchr(" \t\r\n", buf[b - 1]) != NULL && buf[b - 1] != '\0')
		b--;
	if (n == sizeof buf || mm_key_from_base64(buf + a, b - a, priv) != 0) {
		fprintf(stderr, "mailmesh pubkey: stdin is not a private key: expected the "
		                "44-character base64 line of `mailmesh genkey`\n");
		goto out;
	}
	if (mm_key_public(priv, pub) != 0) {
		fprintf(stderr, "mailmesh pubkey: not a usable X25519 private key\n");
		goto out;
	}
	mm_key_to_base64(pub, text);
	if (printf("%s\n", text) < 0 || fflush(stdout) != 0) {
		fprintf(stderr, "mailmesh pubkey: cannot write to stdout: %s\n", strerror(errno));
		rc = 1;
		goto out;
	}
	rc = 0;
out:
	sodium_memzero(buf, sizeof buf);
	sodium_memzero(priv, sizeof priv);
	return rc;
}
