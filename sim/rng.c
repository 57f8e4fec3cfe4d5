/*
 * rng.c — the simulator's only source of randomness: xoshiro256** seeded through
 * splitmix64.  Same seed, same sequence, on every machine (integer arithmetic only).
 */
#include "sim/sim.h"

uint64_t sim_mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

void sim_rng_seed(struct sim_rng *r, uint64_t seed)
{
	uint64_t x = seed;
	for (int i = 0; i < 4; i++) {
		r->s[i] = sim_mix64(x);
		x += 0x9e3779b97f4a7c15ULL;
	}
	if (!(r->s[0] | r->s[1] | r->s[2] | r->s[3]))
		r->s[0] = 1;
}

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

uint64_t sim_rng_next(struct sim_rng *r)
{
	uint64_t *s = r->s;
	uint64_t result = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

uint64_t sim_rng_below(struct sim_rng *r, uint64_t n)
{
	if (n == 0)
		return 0;
	/* rejection sampling: no modulo bias */
	uint64_t lim = UINT64_MAX - UINT64_MAX % n;
	uint64_t x;
	do
		x = sim_rng_next(r);
	while (x >= lim);
	return x % n;
}

uint64_t sim_rng_range(struct sim_rng *r, uint64_t lo, uint64_t hi)
{
	if (hi <= lo)
		return lo;
	if (hi - lo == UINT64_MAX)
		return sim_rng_next(r);
	return lo + sim_rng_below(r, hi - lo + 1);
}

double sim_rng_unit(struct sim_rng *r)
{
	return (double)(sim_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

bool sim_rng_chance(struct sim_rng *r, double p)
{
	if (p <= 0)
		return false;
	return sim_rng_unit(r) < p;
}

void sim_rng_bytes(struct sim_rng *r, uint8_t *buf, size_t n)
{
	while (n > 0) {
		uint64_t x = sim_rng_next(r);
		for (int i = 0; i < 8 && n > 0; i++, n--) {
			*buf++ = (uint8_t)x;
			x >>= 8;
		}
	}
}
