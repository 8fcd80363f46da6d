/* Counter-based random numbers for fastnn's random layers (dropout).
 *
 * fnn_rng_u64(seed, i) is element i of the SplitMix64 sequence started at `seed` (Steele, Lea, Flood 2014):
 * the state after i + 1 steps, seed + (i + 1) * golden gamma, passed through the SplitMix64 finalizer.  Any
 * element is computed directly from (seed, i), so a parallel loop gets the same numbers whatever its split
 * between threads, and a layer needs nothing but one 64-bit seed per call.
 */
#ifndef FNN_RNG_H
#define FNN_RNG_H
#include <stdint.h>

static inline uint64_t fnn_rng_u64(uint64_t seed, uint64_t i)
{
    uint64_t z = seed + (i + 1) * UINT64_C(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

#endif
