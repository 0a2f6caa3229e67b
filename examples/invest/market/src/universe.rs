//! The simulated universe: 10 sectors of 20 tickers each, named so that nobody mistakes them
//! for real companies (`TEC01`, "Technology Sim 01").

/// The sectors, in a fixed order.
pub const SECTORS: [&str; 10] = [
    "Technology",
    "Financials",
    "Health Care",
    "Energy",
    "Consumer",
    "Industrials",
    "Materials",
    "Utilities",
    "Real Estate",
    "Communication",
];

/// Tickers per sector.
pub const PER_SECTOR: usize = 20;

/// One listed ticker.
#[derive(Clone, Debug, PartialEq)]
pub struct Listing {
    pub ticker: String,
    pub sector: &'static str,
    pub name: String,
}

/// Every ticker, sector by sector.
pub fn listings() -> Vec<Listing> {
    SECTORS
        .iter()
        .flat_map(|sector| {
            let code: String = sector
                .chars()
                .filter(char::is_ascii_alphabetic)
                .take(3)
                .collect::<String>()
                .to_ascii_uppercase();
            (1..=PER_SECTOR).map(move |i| Listing {
                ticker: format!("{code}{i:02}"),
                sector,
                name: format!("{sector} Sim {i:02}"),
            })
        })
        .collect()
}

/// The sector's name as written in [`SECTORS`], however it was spelled.
pub fn sector(name: &str) -> Option<&'static str> {
    SECTORS
        .iter()
        .copied()
        .find(|s| s.eq_ignore_ascii_case(name.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_hundred_tickers_each_named_once() {
        let all = listings();
        assert_eq!(all.len(), 200);
        let mut names: Vec<&str> = all.iter().map(|l| l.ticker.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 200, "ticker codes are unique");
        assert_eq!(all[0].ticker, "TEC01");
        assert_eq!(sector("real estate"), Some("Real Estate"));
        assert_eq!(sector("Crypto"), None);
    }
}
