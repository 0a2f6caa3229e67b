//! The prices' random walk: each tick, every price moves by a log-return made of its sector's
//! shock and its own, `vol * (rho * z_sector + sqrt(1 - rho^2) * z_own)`, with the `z` drawn
//! from a normal distribution. Tickers of one sector move together as much as `rho` says.
//!
//! The draws of tick `n` come from a generator seeded with `(seed, n)`: the same seed gives the
//! same market, tick for tick, and a restart that goes on from tick `n` draws what it would
//! have drawn.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How prices move.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Walk {
    pub seed: u64,
    /// Standard deviation of a tick's log-return.
    pub volatility: f64,
    /// How much of it is the sector's (0 to 1).
    pub correlation: f64,
}

impl Walk {
    /// The prices (cents) after tick `tick`, from `prices`; `sectors[i]` is the sector index
    /// of price `i`. A price never falls below a cent.
    pub fn step(&self, tick: u64, prices: &[i64], sectors: &[usize]) -> Vec<i64> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ tick.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let shocks: Vec<f64> = (0..crate::universe::SECTORS.len())
            .map(|_| normal(&mut rng))
            .collect();
        let own = (1.0 - self.correlation * self.correlation).max(0.0).sqrt();
        prices
            .iter()
            .zip(sectors)
            .map(|(&price, &sector)| {
                let r =
                    self.volatility * (self.correlation * shocks[sector] + own * normal(&mut rng));
                ((price as f64) * r.exp()).round().max(1.0) as i64
            })
            .collect()
    }

    /// The first prices: from 10.00 to 500.00, drawn from the seed.
    pub fn first_prices(&self, n: usize) -> Vec<i64> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        (0..n).map(|_| rng.gen_range(1_000..50_000)).collect()
    }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u: f64 = rng.gen_range(f64::EPSILON..1.0);
    let v: f64 = rng.r#gen();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn returns(walk: &Walk, ticks: u64) -> Vec<Vec<f64>> {
        // Two sectors of two tickers each.
        let sectors = [0, 0, 1, 1];
        let mut prices = vec![1_000_000i64; 4];
        let mut out = vec![Vec::new(); 4];
        for tick in 1..=ticks {
            let next = walk.step(tick, &prices, &sectors);
            for i in 0..4 {
                out[i].push((next[i] as f64 / prices[i] as f64).ln());
            }
            prices = next;
        }
        out
    }

    fn correlation(a: &[f64], b: &[f64]) -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
        cov / (va * vb).sqrt()
    }

    #[test]
    fn a_seed_is_one_market_and_a_sector_moves_together() {
        let walk = Walk {
            seed: 7,
            volatility: 0.01,
            correlation: 0.8,
        };
        let r = returns(&walk, 3000);
        assert_eq!(r, returns(&walk, 3000), "the same seed, the same market");
        let other = Walk { seed: 8, ..walk };
        assert_ne!(r, returns(&other, 3000));
        let same_sector = correlation(&r[0], &r[1]);
        let across = correlation(&r[0], &r[2]);
        // rho^2 = 0.64 within a sector, none across.
        assert!((0.55..0.73).contains(&same_sector), "{same_sector}");
        assert!(across.abs() < 0.1, "{across}");
        let sd = (r[0].iter().map(|x| x * x).sum::<f64>() / r[0].len() as f64).sqrt();
        assert!((0.009..0.011).contains(&sd), "{sd}");
    }

    #[test]
    fn a_price_never_falls_below_a_cent() {
        let walk = Walk {
            seed: 1,
            volatility: 2.0,
            correlation: 0.0,
        };
        let mut prices = vec![1i64; 20];
        let sectors = vec![0; 20];
        for tick in 0..100 {
            prices = walk.step(tick, &prices, &sectors);
            assert!(prices.iter().all(|p| *p >= 1));
        }
    }
}
