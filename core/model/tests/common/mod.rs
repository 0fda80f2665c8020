//! Shared by the property-test files.

use proptest::test_runner::{Config, RngSeed};

/// 256 cases unless `PROPTEST_CASES` says otherwise; a fixed seed unless `PROPTEST_RNG_SEED` is
/// set, so CI is reproducible and a wider random sweep is one variable away.
pub fn config(seed: u64) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(seed);
    }
    config
}
