//! Seeded random streams: every draw of an experiment (arrivals, sizes, acceptance, dispatch) comes
//! from its own stream of the one seed, so adding draws to one never shifts another.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// An independent random stream of `seed` (the experiment's and the matrix's draws).
pub(crate) fn stream_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}
