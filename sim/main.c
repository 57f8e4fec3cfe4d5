/*
 * main.c — build/mailmesh-sim: command line of the deterministic cluster simulator.
 *
 *   mailmesh-sim --nodes N --seed S [fault flags] [--json]     one run
 *   mailmesh-sim --sweep K [--seed S] [--max-nodes M]           K seeds S..S+K-1, fault
 *                                                               parameters drawn from each
 *   mailmesh-sim --measure spread|recon ...                     docs/simulation.md
 * Exit status: 0 all invariants held and the cluster converged, 1 a violation (the
 * seed, the violations and a short trace are printed), 2 usage error.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "sim/sim.h"

static void usage(FILE *f)
{
	fputs("usage: mailmesh-sim [--nodes N] [--seed S] [--json] [--trace] [options]\n"
	      "       mailmesh-sim --sweep K [--seed S] [--max-nodes M] [--json]\n"
	      "       mailmesh-sim --measure spread [--nodes N] [--loss P] [--no-push] [--trials T]\n"
	      "       mailmesh-sim --measure recon [--base B] [--diff D]\n"
	      "cluster:  --nodes N (5) --degree D (all up to 64 nodes, else 32) --users U (3)\n"
	      "          --gossip-ms MS (1000) --commit-ms MS (5000) --push / --no-push (push)\n"
	      "          --fanout F (gossip default)\n"
	      "workload: --ops R per second (5) --large P (0.05) --conflict P (0.05)\n"
	      "          --phase-ms MS: workload and faults last this long (60000)\n"
	      "faults:   --loss P (0.02) --delay-min MS (1) --delay-max MS (20)\n"
	      "          --tail P (0.01) --tail-ms MS (500) --reorder P (0.02) --reorder-ms MS (50)\n"
	      "          --dup P (0.01) --resets R/s (0.02) --partitions R/s (0.01)\n"
	      "          --partition-ms MS (10000) --oneway P (0.3) --crashes R/s (0.01)\n"
	      "          --down-ms MS (5000) --skew-ms MS (500) --slow P (0.1) --slow-factor F (5)\n"
	      "          --stream-timeout-ms MS (15000) --attacks R/s: forged and replayed\n"
	      "          datagrams and handshakes, garbage connections (0.05)\n"
	      "          --no-faults (all of them off)\n"
	      "channel:  --rekey-bytes B (32768) --rekey-ms MS (5000): each Noise channel's\n"
	      "          sender rekeys after this much (the daemon: 1 GiB / 120 s)\n"
	      "checks:   --bound-ms MS: convergence must happen this soon after healing (120000)\n"
	      "          --sabotage 1|2|3|4: corrupt a stored body / hide a flag effect / the\n"
	      "          last node never raises a UID need / lists re-filed messages one UID\n"
	      "          off, to prove that the checker catches it (exit 1 expected)\n"
	      "uids:     --uids / --no-uids: model Dovecot's UID listings and run the UID rule\n"
	      "          (crdt/uid.h) on every node (on)  --uid-grace-ms MS: a started node\n"
	      "          is no UID authority this long (5000)  --no-uid-push: leave the plan's\n"
	      "          UID changes to anti-entropy (the daemon pushes them at commit; on)\n"
	      "          --no-uid-hold: replicas list bodies as they arrive instead of in\n"
	      "          UID order (the daemon holds those above NEXTUID; on)\n"
	      "          --no-uid-refile-hold: replicas re-file moved messages at once instead\n"
	      "          of waiting for lower moves (crdt/uid.h mm_uid_plan's hold; on)\n"
	      "gc:       --gc-grace-ms MS: tombstone GC at each periodic commit, as the daemon's\n"
	      "          hourly one (0: off)  --gc-max-ms MS: a peer not in sync this long is not\n"
	      "          waited for (6 x grace)  --gc-margin-ms MS: kept before a peer's last\n"
	      "          in-sync time, and the rounding (commit-ms + grace / 4; a sweep skews\n"
	      "          clocks by at most a quarter of it)  --gc-no-wait: the old rule,\n"
	      "          now - grace only  --gc-no-bounds: each node's own view only, not\n"
	      "          also the bounds its peers send\n",
	      f);
}

static int num(const char *s, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || v < lo || v > hi || isnan(v))
		return -1;
	*out = v;
	return 0;
}

enum {
	O_NODES = 256, O_SEED, O_JSON, O_SWEEP, O_TRACE, O_DEGREE, O_USERS, O_GOSSIP, O_COMMIT,
	O_PUSH, O_NOPUSH, O_FANOUT, O_OPS, O_LARGE, O_CONFLICT, O_PHASE, O_LOSS, O_DMIN, O_DMAX,
	O_TAIL, O_TAILMS, O_REORDER, O_REORDERMS, O_DUP, O_RESETS, O_PARTS, O_PARTMS, O_ONEWAY,
	O_CRASHES, O_DOWNMS, O_SKEW, O_SLOW, O_SLOWF, O_STREAMTO, O_NOFAULTS, O_BOUND, O_MAXNODES,
	O_MEASURE, O_TRIALS, O_BASE, O_DIFF, O_SABOTAGE, O_HELP, O_ATTACKS, O_REKEYB, O_REKEYMS,
	O_UIDS, O_NOUIDS, O_UIDGRACE, O_UIDPUSH, O_NOUIDPUSH, O_UIDHOLD, O_NOUIDHOLD, O_NOREFILEHOLD,
	O_GCGRACE, O_GCMAX, O_GCMARGIN, O_GCNOWAIT, O_GCNOBOUNDS,
};

static const struct option opts[] = {
	{ "nodes", 1, 0, O_NODES }, { "seed", 1, 0, O_SEED }, { "json", 0, 0, O_JSON },
	{ "sweep", 1, 0, O_SWEEP }, { "trace", 0, 0, O_TRACE }, { "degree", 1, 0, O_DEGREE },
	{ "users", 1, 0, O_USERS }, { "gossip-ms", 1, 0, O_GOSSIP }, { "commit-ms", 1, 0, O_COMMIT },
	{ "push", 0, 0, O_PUSH }, { "no-push", 0, 0, O_NOPUSH }, { "fanout", 1, 0, O_FANOUT },
	{ "ops", 1, 0, O_OPS }, { "large", 1, 0, O_LARGE }, { "conflict", 1, 0, O_CONFLICT },
	{ "phase-ms", 1, 0, O_PHASE }, { "loss", 1, 0, O_LOSS }, { "delay-min", 1, 0, O_DMIN },
	{ "delay-max", 1, 0, O_DMAX }, { "tail", 1, 0, O_TAIL }, { "tail-ms", 1, 0, O_TAILMS },
	{ "reorder", 1, 0, O_REORDER }, { "reorder-ms", 1, 0, O_REORDERMS }, { "dup", 1, 0, O_DUP },
	{ "resets", 1, 0, O_RESETS }, { "partitions", 1, 0, O_PARTS },
	{ "partition-ms", 1, 0, O_PARTMS }, { "oneway", 1, 0, O_ONEWAY },
	{ "crashes", 1, 0, O_CRASHES }, { "down-ms", 1, 0, O_DOWNMS }, { "skew-ms", 1, 0, O_SKEW },
	{ "slow", 1, 0, O_SLOW }, { "slow-factor", 1, 0, O_SLOWF },
	{ "stream-timeout-ms", 1, 0, O_STREAMTO }, { "no-faults", 0, 0, O_NOFAULTS },
	{ "bound-ms", 1, 0, O_BOUND }, { "max-nodes", 1, 0, O_MAXNODES },
	{ "measure", 1, 0, O_MEASURE }, { "trials", 1, 0, O_TRIALS }, { "base", 1, 0, O_BASE },
	{ "diff", 1, 0, O_DIFF }, { "sabotage", 1, 0, O_SABOTAGE }, { "help", 0, 0, O_HELP },
	{ "attacks", 1, 0, O_ATTACKS }, { "rekey-bytes", 1, 0, O_REKEYB },
	{ "rekey-ms", 1, 0, O_REKEYMS }, { "uids", 0, 0, O_UIDS }, { "no-uids", 0, 0, O_NOUIDS },
	{ "uid-grace-ms", 1, 0, O_UIDGRACE }, { "uid-push", 0, 0, O_UIDPUSH },
	{ "no-uid-push", 0, 0, O_NOUIDPUSH }, { "uid-hold", 0, 0, O_UIDHOLD }, { "no-uid-hold", 0, 0, O_NOUIDHOLD },
	{ "no-uid-refile-hold", 0, 0, O_NOREFILEHOLD },
	{ "gc-grace-ms", 1, 0, O_GCGRACE }, { "gc-max-ms", 1, 0, O_GCMAX }, { "gc-margin-ms", 1, 0, O_GCMARGIN },
	{ "gc-no-wait", 0, 0, O_GCNOWAIT },
	{ "gc-no-bounds", 0, 0, O_GCNOBOUNDS },
	{ 0, 0, 0, 0 },
};

static void no_faults(struct sim_config *c)
{
	c->loss = c->tail_p = c->reorder = c->dup = 0;
	c->resets_per_s = c->partitions_per_s = c->crashes_per_s = 0;
	c->skew_ms = 0;
	c->slow_p = 0;
	c->attacks_per_s = 0;
}

static int sweep(const struct sim_config *base, uint64_t k, unsigned max_nodes, bool json)
{
	uint64_t failed = 0;
	if (json)
		fputs("{\"sweep\":[", stdout);
	for (uint64_t i = 0; i < k; i++) {
		struct sim_config c;
		sim_config_random(&c, base->seed + i, max_nodes);
		c.trace = base->trace;
		c.uids = base->uids;
		c.uid_grace_ms = base->uid_grace_ms;
		c.uid_push = base->uid_push;
		c.uid_hold = base->uid_hold;
		c.uid_refile_hold = base->uid_refile_hold;
		c.sabotage = base->sabotage;
		c.gc_grace_ms = base->gc_grace_ms;
		c.gc_max_ms = base->gc_max_ms;
		c.gc_margin_ms = base->gc_margin_ms;
		c.gc_no_wait = base->gc_no_wait;
		c.gc_no_bounds = base->gc_no_bounds;
		if (c.gc_grace_ms) {
			/* what the GC's guarantee assumes (docs/design.md, "Tombstone GC"): clocks
			 * skewed by less than the margin.  Partitions stay on: the horizon waits
			 * for every peer's bound, so a split among the nodes that stay up is
			 * covered */
			if (c.skew_ms > c.gc_margin_ms / 4)
				c.skew_ms = (uint32_t)(c.gc_margin_ms / 4);
			c.push = true;
		}
		struct sim_result *r = calloc(1, sizeof(*r));
		if (!r)
			return 2;
		int rc = sim_run(&c, r);
		if (json) {
			if (i)
				fputc(',', stdout);
			sim_print_json(stdout, &c, r);
		} else if (rc != 0 || k == 1) {
			if (rc != 0)
				printf("FAIL seed %llu\n", (unsigned long long)c.seed);
			sim_print_human(stdout, &c, r);
		}
		if (rc != 0)
			failed++;
		free(r);
	}
	if (json)
		printf("],\"seeds\":%llu,\"failed\":%llu}\n", (unsigned long long)k,
		       (unsigned long long)failed);
	else
		printf("sweep: %llu seeds from %llu, %llu passed, %llu failed\n", (unsigned long long)k,
		       (unsigned long long)base->seed, (unsigned long long)(k - failed),
		       (unsigned long long)failed);
	return failed ? 1 : 0;
}

int main(int argc, char **argv)
{
	struct sim_config c;
	sim_config_defaults(&c);
	bool json = false;
	uint64_t sweep_k = 0, trials = 20, base = 1000, diff = 1;
	unsigned max_nodes = 8;
	const char *measure = NULL;
	int o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		double v = 0;
		if (o == '?')
			return usage(stderr), 2;
		if (o == O_HELP)
			return usage(stdout), 0;
		if (optarg && o != O_MEASURE && num(optarg, 0, 1e15, &v) < 0) {
			fprintf(stderr, "mailmesh-sim: bad number for --%s: %s\n", opts[o - O_NODES].name, optarg);
			return 2;
		}
		switch (o) {
		case O_NODES: c.nodes = (unsigned)v; break;
		case O_SEED: c.seed = strtoull(optarg, NULL, 10); break;
		case O_JSON: json = true; break;
		case O_SWEEP: sweep_k = (uint64_t)v; break;
		case O_TRACE: c.trace = true; break;
		case O_DEGREE: c.degree = (unsigned)v; break;
		case O_USERS: c.users = (unsigned)v; break;
		case O_GOSSIP: c.gossip_ms = (uint32_t)v; break;
		case O_COMMIT: c.commit_ms = (uint32_t)v; break;
		case O_PUSH: c.push = true; break;
		case O_NOPUSH: c.push = false; break;
		case O_FANOUT: c.fanout = (unsigned)v; break;
		case O_OPS: c.ops_per_s = v; break;
		case O_LARGE: c.large_p = v; break;
		case O_CONFLICT: c.conflict_p = v; break;
		case O_PHASE: c.phase_ms = (uint64_t)v; break;
		case O_LOSS: c.loss = v; break;
		case O_DMIN: c.delay_min_ms = (uint32_t)v; break;
		case O_DMAX: c.delay_max_ms = (uint32_t)v; break;
		case O_TAIL: c.tail_p = v; break;
		case O_TAILMS: c.tail_ms = (uint32_t)v; break;
		case O_REORDER: c.reorder = v; break;
		case O_REORDERMS: c.reorder_ms = (uint32_t)v; break;
		case O_DUP: c.dup = v; break;
		case O_RESETS: c.resets_per_s = v; break;
		case O_PARTS: c.partitions_per_s = v; break;
		case O_PARTMS: c.partition_ms = (uint32_t)v; break;
		case O_ONEWAY: c.oneway_p = v; break;
		case O_CRASHES: c.crashes_per_s = v; break;
		case O_DOWNMS: c.down_ms = (uint32_t)v; break;
		case O_SKEW: c.skew_ms = (uint32_t)v; break;
		case O_SLOW: c.slow_p = v; break;
		case O_SLOWF: c.slow_factor = (unsigned)v; break;
		case O_STREAMTO: c.stream_timeout_ms = (uint32_t)v; break;
		case O_NOFAULTS: no_faults(&c); break;
		case O_BOUND: c.bound_ms = (uint64_t)v; break;
		case O_MAXNODES: max_nodes = (unsigned)v; break;
		case O_MEASURE: measure = optarg; break;
		case O_TRIALS: trials = (uint64_t)v; break;
		case O_BASE: base = (uint64_t)v; break;
		case O_DIFF: diff = (uint64_t)v; break;
		case O_SABOTAGE: c.sabotage = (unsigned)v; break;
		case O_ATTACKS: c.attacks_per_s = v; break;
		case O_REKEYB: c.rekey_bytes = (uint64_t)v; break;
		case O_REKEYMS: c.rekey_ms = (uint64_t)v; break;
		case O_UIDS: c.uids = true; break;
		case O_NOUIDS: c.uids = false; break;
		case O_UIDGRACE: c.uid_grace_ms = (uint32_t)v; break;
		case O_UIDPUSH: c.uid_push = true; break;
		case O_NOUIDPUSH: c.uid_push = false; break;
		case O_UIDHOLD: c.uid_hold = true; break;
		case O_NOUIDHOLD: c.uid_hold = false; break;
		case O_NOREFILEHOLD: c.uid_refile_hold = false; break;
		case O_GCGRACE: c.gc_grace_ms = (uint64_t)v; break;
		case O_GCMAX: c.gc_max_ms = (uint64_t)v; break;
		case O_GCMARGIN: c.gc_margin_ms = (uint64_t)v; break;
		case O_GCNOWAIT: c.gc_no_wait = true; break;
		case O_GCNOBOUNDS: c.gc_no_bounds = true; break;
		}
	}
	if (optind < argc) {
		usage(stderr);
		return 2;
	}
	if (c.gc_grace_ms) {
		if (!c.gc_max_ms)
			c.gc_max_ms = 6 * c.gc_grace_ms;
		/* a peer in sync held the tombstones in memory, durable only at its next
		 * commit: the margin covers that (the daemon commits merges within a second and
		 * keeps an hour), as well as clock skew and tombstones in transit */
		if (!c.gc_margin_ms)
			c.gc_margin_ms = c.commit_ms + c.gc_grace_ms / 4;
		if (c.gc_max_ms < c.gc_grace_ms) {
			fputs("mailmesh-sim: --gc-max-ms must be at least --gc-grace-ms\n", stderr);
			return 2;
		}
	}
	if (sodium_init() < 0) {
		fputs("mailmesh-sim: libsodium failed to initialise\n", stderr);
		return 2;
	}
	if (sweep_k)
		return sweep(&c, sweep_k, max_nodes, json);
	if (measure && strcmp(measure, "spread") == 0) {
		struct sim_config m = c;
		double loss = c.loss;
		no_faults(&m);
		m.loss = loss;
		m.ops_per_s = 0;
		struct sim_spread r;
		int rc = sim_measure_spread(&m, (unsigned)trials, &r);
		if (rc < 0) {
			fprintf(stderr, "mailmesh-sim: measurement failed: %s\n", strerror(-rc));
			return 1;
		}
		double log3 = log((double)m.nodes) / log(3.0);
		printf("spread nodes=%u loss=%g push=%s degree=%u trials=%u: mean %.2f rounds (min %.2f, "
		       "max %.2f), mean %.0f ms; log3(N) = %.2f\n",
		       m.nodes, m.loss, m.push ? "on" : "off", m.degree, r.trials, r.mean_rounds, r.min_rounds,
		       r.max_rounds, r.mean_ms, log3);
		return rc;
	}
	if (measure && strcmp(measure, "recon") == 0) {
		struct sim_config m = c;
		no_faults(&m);
		m.ops_per_s = 0;
		struct sim_recon r;
		int rc = sim_measure_recon(&m, base, diff, &r);
		if (rc < 0) {
			fprintf(stderr, "mailmesh-sim: measurement failed: %s\n", strerror(-rc));
			return 1;
		}
		printf("recon base=%llu d=%llu: %llu rounds, %llu round trips, descent %llu bytes "
		       "(%.1f per difference), records %llu bytes, all traffic %llu bytes; d x 32 = %llu\n",
		       (unsigned long long)r.base, (unsigned long long)r.d, (unsigned long long)r.rounds,
		       (unsigned long long)r.round_trips, (unsigned long long)r.descent_bytes,
		       r.d ? (double)r.descent_bytes / (double)r.d : 0.0, (unsigned long long)r.record_bytes,
		       (unsigned long long)r.total_bytes, (unsigned long long)(r.d * 32));
		return rc;
	}
	if (measure) {
		fprintf(stderr, "mailmesh-sim: unknown measurement %s\n", measure);
		return 2;
	}
	struct sim_result *r = calloc(1, sizeof(*r));
	if (!r)
		return 2;
	int rc = sim_run(&c, r);
	if (rc < 0) {
		fprintf(stderr, "mailmesh-sim: cannot run: %s\n", strerror(-rc));
		free(r);
		return 2;
	}
	if (json)
		sim_print_json(stdout, &c, r);
	else
		sim_print_human(stdout, &c, r);
	free(r);
	return rc;
}
