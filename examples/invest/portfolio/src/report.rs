//! What a member's portfolio is worth and how it is spread, against their investment style.
//!
//! Pure functions of the account, its holdings and the market's prices, so that what a report
//! says is tested without a market. Without prices (the market not answering), holdings are
//! valued at what they cost and the report says so.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// An investment-style profile, and the most it holds in one sector and in one ticker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Conservative,
    Balanced,
    Aggressive,
}

impl Style {
    pub fn parse(s: &str) -> Option<Style> {
        match s {
            "conservative" => Some(Style::Conservative),
            "balanced" => Some(Style::Balanced),
            "aggressive" => Some(Style::Aggressive),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Style::Conservative => "conservative",
            Style::Balanced => "balanced",
            Style::Aggressive => "aggressive",
        }
    }

    /// (the most in one sector, the most in one ticker), as shares of the whole portfolio.
    pub fn limits(self) -> (f64, f64) {
        match self {
            Style::Conservative => (0.25, 0.10),
            Style::Balanced => (0.40, 0.20),
            Style::Aggressive => (0.70, 0.40),
        }
    }
}

/// A holding as stored.
#[derive(Clone, Debug)]
pub struct Holding {
    pub ticker: String,
    pub sector: String,
    pub quantity: i64,
    pub cost: i64,
}

/// A holding valued.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Position {
    pub ticker: String,
    pub sector: String,
    pub quantity: i64,
    pub cost: i64,
    /// None: the market did not answer.
    pub price: Option<i64>,
    pub value: i64,
    pub pnl: i64,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Slice {
    pub sector: String,
    pub value: i64,
    pub share: f64,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub style: &'static str,
    pub cash: i64,
    pub invested: i64,
    pub total: i64,
    pub positions: Vec<Position>,
    /// By sector, largest first, cash included as `Cash`.
    pub allocation: Vec<Slice>,
    pub unrealized: i64,
    pub realized: i64,
    pub priced: bool,
    /// What the style says of the spread.
    pub notes: Vec<String>,
}

/// The report of an account with `cash`, `realized` P&L and `holdings` at `prices`.
pub fn report(
    style: Style,
    cash: i64,
    realized: i64,
    holdings: &[Holding],
    prices: Option<&HashMap<String, i64>>,
) -> Report {
    let positions: Vec<Position> = holdings
        .iter()
        .filter(|h| h.quantity > 0)
        .map(|h| {
            let price = prices.and_then(|p| p.get(&h.ticker).copied());
            let value = price.map_or(h.cost, |p| p * h.quantity);
            Position {
                ticker: h.ticker.clone(),
                sector: h.sector.clone(),
                quantity: h.quantity,
                cost: h.cost,
                price,
                value,
                pnl: value - h.cost,
            }
        })
        .collect();
    let invested: i64 = positions.iter().map(|p| p.value).sum();
    let total = cash + invested;
    let share = |v: i64| {
        if total > 0 {
            v as f64 / total as f64
        } else {
            0.0
        }
    };
    let mut sectors: BTreeMap<&str, i64> = BTreeMap::new();
    for p in &positions {
        *sectors.entry(&p.sector).or_default() += p.value;
    }
    let mut allocation: Vec<Slice> = sectors
        .iter()
        .map(|(s, v)| Slice {
            sector: s.to_string(),
            value: *v,
            share: share(*v),
        })
        .chain(std::iter::once(Slice {
            sector: "Cash".into(),
            value: cash,
            share: share(cash),
        }))
        .collect();
    allocation.sort_by(|a, b| b.value.cmp(&a.value).then(a.sector.cmp(&b.sector)));
    let (max_sector, max_ticker) = style.limits();
    let percent = |x: f64| format!("{:.0}%", x * 100.0);
    let mut notes = Vec::new();
    for slice in allocation
        .iter()
        .filter(|s| s.sector != "Cash" && s.share > max_sector)
    {
        notes.push(format!(
            "{} is {} of the portfolio: above the {} a {} profile holds in one sector",
            slice.sector,
            percent(slice.share),
            percent(max_sector),
            style.as_str()
        ));
    }
    for p in positions.iter().filter(|p| share(p.value) > max_ticker) {
        notes.push(format!(
            "{} is {} of the portfolio: above the {} a {} profile holds in one ticker",
            p.ticker,
            percent(share(p.value)),
            percent(max_ticker),
            style.as_str()
        ));
    }
    if positions.is_empty() {
        notes.push("Nothing is invested yet: the whole portfolio is cash".into());
    }
    Report {
        style: style.as_str(),
        cash,
        invested,
        total,
        unrealized: positions.iter().map(|p| p.pnl).sum(),
        positions,
        allocation,
        realized,
        priced: prices.is_some(),
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(ticker: &str, sector: &str, quantity: i64, cost: i64) -> Holding {
        Holding {
            ticker: ticker.into(),
            sector: sector.into(),
            quantity,
            cost,
        }
    }

    #[test]
    fn values_allocation_and_notes_follow_prices_and_style() {
        let holdings = [
            holding("TEC01", "Technology", 10, 10_000),
            holding("TEC02", "Technology", 5, 5_000),
            holding("ENE01", "Energy", 2, 2_000),
            holding("FIN01", "Financials", 0, 0), // sold out: not a position
        ];
        let prices: HashMap<String, i64> = [("TEC01", 1_500), ("TEC02", 800), ("ENE01", 1_000)]
            .iter()
            .map(|(t, p)| (t.to_string(), *p))
            .collect();
        let r = report(Style::Balanced, 3_000, 700, &holdings, Some(&prices));
        assert_eq!(r.positions.len(), 3);
        assert_eq!(r.invested, 15_000 + 4_000 + 2_000);
        assert_eq!(r.total, 24_000);
        assert_eq!(r.unrealized, 5_000 - 1_000);
        assert_eq!(r.realized, 700);
        assert_eq!(r.allocation[0].sector, "Technology");
        assert_eq!(r.allocation[0].value, 19_000);
        assert!((r.allocation.iter().map(|s| s.share).sum::<f64>() - 1.0).abs() < 1e-9);
        // Technology is 79%: above a balanced profile's 40%; TEC01 is 62%, above its 20%.
        assert!(
            r.notes.iter().any(|n| n.starts_with("Technology is 79%")),
            "{:?}",
            r.notes
        );
        assert!(
            r.notes.iter().any(|n| n.starts_with("TEC01 is 62%")),
            "{:?}",
            r.notes
        );
        let aggressive = report(Style::Aggressive, 3_000, 700, &holdings, Some(&prices));
        assert_eq!(aggressive.notes.len(), 2, "{:?}", aggressive.notes); // 79% > 70%, 62% > 40%
        // Without prices, at cost.
        let unpriced = report(Style::Balanced, 3_000, 0, &holdings, None);
        assert_eq!(
            (unpriced.invested, unpriced.unrealized, unpriced.priced),
            (17_000, 0, false)
        );
        let empty = report(Style::Conservative, 100, 0, &[], None);
        assert_eq!(empty.notes.len(), 1);
        assert_eq!(empty.allocation[0].share, 1.0);
    }
}
