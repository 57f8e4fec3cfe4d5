/*
 * fuzz_peers.c — libFuzzer target for the peers-file parser (proto/peers.c): any bytes
 * in; on success every entry must be well-formed and findable by name, key and node id;
 * on failure the error must name a line.  Also feeds the input to mm_hostport_parse().
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/channel.h"
#include "proto/peers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mm_peers *p = NULL;
	char err[256];
	char host[MM_PEER_HOST_MAX + 1];
	uint16_t port;

	if (mm_peers_parse((const char *)data, size, "fuzz", &p, err, sizeof err) == 0) {
		for (size_t i = 0; i < p->n; i++) {
			const struct mm_peer *e = &p->v[i];
			if (!mm_peer_name_valid(e->name, strlen(e->name)) || e->port == 0 ||
			    e->host[0] == '\0' || e->line == 0 || e->node_id != mm_node_id(e->pub))
				abort();
			if (mm_peers_find_name(p, e->name) != e || mm_peers_find_key(p, e->pub) != e ||
			    mm_peers_find_node(p, e->node_id) != e)
				abort();
		}
		mm_peers_free(&p);
	} else {
		if (p != NULL || strncmp(err, "fuzz:", 5) != 0)
			abort();
	}
	if (mm_hostport_parse((const char *)data, size, host, sizeof host, &port) == 0) {
		if (port == 0 || strlen(host) == 0 || strlen(host) > MM_PEER_HOST_MAX)
			abort();
	}
	return 0;
}
