/*
 * keyfile.h — reading and writing secret key files (the node's private key and the
 * optional cluster pre-shared key): one line, the 44-character base64 of 32 bytes, as
 * `wg genkey` writes.  A secret file must not be readable by group or others; loading
 * one that is is refused with the command that fixes it.  node/ only (file I/O).
 */
#ifndef MM_KEYFILE_H
#define MM_KEYFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Reads a 32-byte key from `path`: a regular file of mode 0600 or stricter (no group or
 * other bits; checked on the open descriptor), holding the base64 text optionally
 * surrounded by whitespace/newlines.  Returns 0 and fills key_r, or a negative errno
 * with err (errlen bytes) set to "PATH: what is wrong and how to fix it":
 *   -EPERM   readable by group or others ("fix with: chmod 600 PATH")
 *   -EINVAL  not a regular file, or not one base64 key
 *   other    open/read failure (-ENOENT, -EACCES, ...)
 * key_r is zeroed on failure; the read buffer is wiped. */
int mm_keyfile_load(const char *path, uint8_t key_r[32], char *err, size_t errlen);

/* Writes the base64 of key and a newline to `path` with mode 0600 (whatever the umask),
 * through a temporary file in the same directory renamed into place.  An existing path
 * is refused with -EEXIST unless `force`.  Returns 0 or a negative errno with err set to
 * "PATH: what is wrong". */
int mm_keyfile_write(const char *path, const uint8_t key[32], bool force, char *err, size_t errlen);

#endif
