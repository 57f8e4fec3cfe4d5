/*
 * json.c — the simulator's output: a human summary and the --json object (nodes, seed,
 * converged, rounds_to_converge, sim_time_ms, messages, bytes_sent, datagrams_sent,
 * the channel's handshakes, rekeys and rejections, the UID model's counters, violations
 * and more).  Only virtual quantities are printed, so the output of a seed
 * is byte-identical on every run.
 */
#include <stdio.h>

#include "sim/sim.h"

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

void sim_print_json(FILE *f, const struct sim_config *c, const struct sim_result *r)
{
	fprintf(f, "{\"nodes\":%u,\"seed\":%llu,\"converged\":%s,\"rounds_to_converge\":%llu,"
	           "\"sim_time_ms\":%llu,\"heal_ms\":%llu,\"converge_ms\":%llu,"
	           "\"messages\":%llu,\"bytes_sent\":%llu,\"datagrams_sent\":%llu,\"stream_msgs\":%llu,"
	           "\"dropped\":%llu,\"duplicated\":%llu,\"resets\":%llu,\"partitions\":%llu,"
	           "\"crashes\":%llu,\"ops\":%llu,\"deliveries\":%llu,\"expunges\":%llu,"
	           "\"flag_ops\":%llu,\"folder_ops\":%llu,\"conflicts\":%llu,\"rounds_done\":%llu,"
	           "\"rounds_aborted\":%llu,\"bodies_fetched\":%llu,\"proto_errors\":%llu,",
	        r->nodes, (unsigned long long)r->seed, r->converged ? "true" : "false",
	        (unsigned long long)r->rounds_to_converge, (unsigned long long)r->sim_time_ms,
	        (unsigned long long)r->heal_ms, (unsigned long long)r->converge_ms,
	        (unsigned long long)r->messages, (unsigned long long)r->bytes_sent,
	        (unsigned long long)r->datagrams_sent, (unsigned long long)r->stream_msgs,
	        (unsigned long long)r->dropped, (unsigned long long)r->duplicated,
	        (unsigned long long)r->resets, (unsigned long long)r->partitions,
	        (unsigned long long)r->crashes, (unsigned long long)r->ops,
	        (unsigned long long)r->deliveries, (unsigned long long)r->expunges,
	        (unsigned long long)r->flag_ops, (unsigned long long)r->folder_ops,
	        (unsigned long long)r->conflicts, (unsigned long long)r->rounds_done,
	        (unsigned long long)r->rounds_aborted, (unsigned long long)r->bodies_fetched,
	        (unsigned long long)r->proto_errors);
	fprintf(f, "\"handshakes\":%llu,\"rekeys\":%llu,\"datagrams_rejected\":%llu,"
	           "\"dgram_replayed\":%llu,\"dgram_too_old\":%llu,\"dgram_forged\":%llu,"
	           "\"handshakes_rejected\":%llu,\"hs_replays_accepted\":%llu,\"attacks\":%llu,",
	        (unsigned long long)r->handshakes, (unsigned long long)r->rekeys,
	        (unsigned long long)r->datagrams_rejected, (unsigned long long)r->dgram_replayed,
	        (unsigned long long)r->dgram_too_old, (unsigned long long)r->dgram_forged,
	        (unsigned long long)r->handshakes_rejected, (unsigned long long)r->hs_replays_accepted,
	        (unsigned long long)r->attacks);
	fprintf(f, "\"uid_listed\":%llu,\"uid_refiled\":%llu,\"uid_moves\":%llu,\"uid_firsts\":%llu,"
	           "\"uid_needs\":%llu,\"uid_resets\":%llu,\"uid_conflicts_seen\":%llu,"
	           "\"uid_settle_rounds\":%llu,\"uid_max_authorities\":%llu,\"uid_authorities\":%u,"
	           "\"uid_held\":%llu,\"uid_refiles_held\":%llu,\"gc_dropped\":%llu,",
	        (unsigned long long)r->uid_listed, (unsigned long long)r->uid_refiled,
	        (unsigned long long)r->uid_moves, (unsigned long long)r->uid_firsts,
	        (unsigned long long)r->uid_needs, (unsigned long long)r->uid_resets,
	        (unsigned long long)r->uid_conflicts_seen, (unsigned long long)r->uid_settle_rounds,
	        (unsigned long long)r->uid_max_authorities, r->uid_authorities,
	        (unsigned long long)r->uid_held, (unsigned long long)r->uid_refiles_held,
	        (unsigned long long)r->gc_dropped);
	fprintf(f, "\"config\":{\"push\":%s,\"users\":%u,\"gossip_ms\":%u,\"phase_ms\":%llu,"
	           "\"ops_per_s\":%g,\"loss\":%g,\"delay_ms\":[%u,%u],\"reorder\":%g,\"dup\":%g,"
	           "\"resets_per_s\":%g,\"partitions_per_s\":%g,\"crashes_per_s\":%g,"
	           "\"skew_ms\":%u,\"slow_p\":%g,\"rekey_bytes\":%llu,\"rekey_ms\":%llu,"
	           "\"attacks_per_s\":%g,\"bound_ms\":%llu,\"uids\":%s,\"uid_grace_ms\":%u,"
	           "\"uid_push\":%s,\"uid_hold\":%s,\"uid_refile_hold\":%s},",
	        c->push ? "true" : "false", c->users, c->gossip_ms, (unsigned long long)c->phase_ms,
	        c->ops_per_s, c->loss, c->delay_min_ms, c->delay_max_ms, c->reorder, c->dup,
	        c->resets_per_s, c->partitions_per_s, c->crashes_per_s, c->skew_ms, c->slow_p,
	        (unsigned long long)c->rekey_bytes, (unsigned long long)c->rekey_ms, c->attacks_per_s,
	        (unsigned long long)c->bound_ms, c->uids ? "true" : "false", c->uid_grace_ms,
	        c->uid_push ? "true" : "false", c->uid_hold ? "true" : "false",
	        c->uid_refile_hold ? "true" : "false");
	fputs("\"violations\":[", f);
	for (unsigned i = 0; i < r->n_violations; i++) {
		if (i)
			fputc(',', f);
		json_str(f, r->violations[i]);
	}
	fputs("],\"trace\":[", f);
	if (r->n_violations || c->trace)
		for (unsigned i = 0; i < r->n_trace; i++) {
			if (i)
				fputc(',', f);
			json_str(f, r->trace[i]);
		}
	fputs("]}\n", f);
}

void sim_print_human(FILE *f, const struct sim_config *c, const struct sim_result *r)
{
	fprintf(f, "mailmesh-sim seed %llu, %u nodes, %u users, push %s: ", (unsigned long long)r->seed,
	        r->nodes, c->users, c->push ? "on" : "off");
	if (r->converged)
		fprintf(f, "converged %llu ms after healing (%llu gossip rounds; healed at %llu ms)\n",
		        (unsigned long long)(r->converge_ms - r->heal_ms),
		        (unsigned long long)r->rounds_to_converge, (unsigned long long)r->heal_ms);
	else
		fprintf(f, "NOT converged\n");
	fprintf(f, "  workload: %llu ops: %llu deliveries, %llu flag/keyword changes (%llu concurrent "
	           "pairs), %llu expunges, %llu folder ops\n",
	        (unsigned long long)r->ops, (unsigned long long)r->deliveries,
	        (unsigned long long)r->flag_ops, (unsigned long long)r->conflicts,
	        (unsigned long long)r->expunges, (unsigned long long)r->folder_ops);
	fprintf(f, "  faults: loss %g, delay %u-%u ms, %llu crashes, %llu stream resets, %llu partitions, "
	           "%llu datagrams dropped, %llu duplicated\n",
	        c->loss, c->delay_min_ms, c->delay_max_ms, (unsigned long long)r->crashes,
	        (unsigned long long)r->resets, (unsigned long long)r->partitions,
	        (unsigned long long)r->dropped, (unsigned long long)r->duplicated);
	fprintf(f, "  network: %llu messages (%llu datagrams, %llu stream), %llu bytes\n",
	        (unsigned long long)r->messages, (unsigned long long)r->datagrams_sent,
	        (unsigned long long)r->stream_msgs, (unsigned long long)r->bytes_sent);
	fprintf(f, "  sync: %llu rounds done, %llu aborted, %llu bodies fetched, %llu rejected messages\n",
	        (unsigned long long)r->rounds_done, (unsigned long long)r->rounds_aborted,
	        (unsigned long long)r->bodies_fetched, (unsigned long long)r->proto_errors);
	fprintf(f, "  channel: %llu handshakes, %llu rekeys, %llu datagrams rejected (%llu replayed, "
	           "%llu too old, %llu forged or stale keys), %llu attacks: %llu connections refused, "
	           "%llu replayed handshakes accepted\n",
	        (unsigned long long)r->handshakes, (unsigned long long)r->rekeys,
	        (unsigned long long)r->datagrams_rejected, (unsigned long long)r->dgram_replayed,
	        (unsigned long long)r->dgram_too_old, (unsigned long long)r->dgram_forged,
	        (unsigned long long)r->attacks, (unsigned long long)r->handshakes_rejected,
	        (unsigned long long)r->hs_replays_accepted);
	if (c->uids)
		fprintf(f, "  uids: %llu listed, %llu held back, %llu re-filed (%llu waits), %llu moves, %llu first UIDs, %llu needs, "
		           "%llu listings restarted, %llu UIDs shown for two messages, settled %llu rounds "
		           "after healing, authorities: at most %llu, %u at the end\n",
		        (unsigned long long)r->uid_listed, (unsigned long long)r->uid_held,
		        (unsigned long long)r->uid_refiled, (unsigned long long)r->uid_refiles_held,
		        (unsigned long long)r->uid_moves, (unsigned long long)r->uid_firsts,
		        (unsigned long long)r->uid_needs, (unsigned long long)r->uid_resets,
		        (unsigned long long)r->uid_conflicts_seen, (unsigned long long)r->uid_settle_rounds,
		        (unsigned long long)r->uid_max_authorities, r->uid_authorities);
	if (c->gc_grace_ms)
		fprintf(f, "  gc: %llu tombstones dropped (grace %llu ms, max %llu ms, margin %llu ms%s)\n",
		        (unsigned long long)r->gc_dropped, (unsigned long long)c->gc_grace_ms,
		        (unsigned long long)c->gc_max_ms, (unsigned long long)c->gc_margin_ms,
		        c->gc_no_wait ? ", not waiting for peers" : c->gc_no_bounds ? ", not waiting for peers' bounds" : "");
	fprintf(f, "  simulated time: %llu ms\n", (unsigned long long)r->sim_time_ms);
	if (!r->n_violations) {
		fprintf(f, "  invariants: all held\n");
	} else {
		fprintf(f, "  VIOLATIONS (seed %llu):\n", (unsigned long long)r->seed);
		for (unsigned i = 0; i < r->n_violations; i++)
			fprintf(f, "    %s\n", r->violations[i]);
	}
	if (r->n_violations || c->trace) {
		fprintf(f, "  trace (last %u events):\n", r->n_trace);
		for (unsigned i = 0; i < r->n_trace; i++)
			fprintf(f, "    %s\n", r->trace[i]);
	}
}
