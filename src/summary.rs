//! `summary.md` for a person: totals, discrepancies by kind and the top accounts. The
//! aggregations run as a polars lazy query over the discrepancy rows.

use crate::amount::Milli;
use crate::error::{Result, TallyError};
use crate::reconcile::{DiscrepancyRow, Kind};
use polars::prelude::*;

/// Per-kind count and Σ delta (thousandths; unpriced rows count 0), and how many of its
/// rows have no delta (events without a rate), which the sum leaves out.
pub struct KindFigures {
    pub kind: Kind,
    pub count: u64,
    pub delta: Milli,
    pub rows_without_delta: u64,
}

/// An account with discrepancies: how many, and Σ |delta|.
pub struct AccountFigures {
    pub account_id: String,
    pub count: u64,
    pub abs_delta: Milli,
}

fn polars_err(e: PolarsError) -> TallyError {
    TallyError::Output {
        file: "summary.md".into(),
        message: format!("aggregation failed: {e}"),
    }
}

fn frame(rows: &[DiscrepancyRow]) -> Result<DataFrame> {
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.name()).collect();
    let accounts: Vec<&str> = rows.iter().map(|r| &*r.account_id).collect();
    let deltas: Vec<i64> = rows
        .iter()
        .map(|r| r.delta_credits.unwrap_or_default().0)
        .collect();
    // Summed by polars in i64 below (by kind, by account): no such sum may overflow, so
    // the sum of every |delta| must fit. Each delta fits DECIMAL(18,3), so only a month of
    // absurd amounts that cancel out in the run's totals (or a forged shard) gets here.
    let abs_sum: i128 = deltas.iter().map(|d| i128::from(*d).abs()).sum();
    if abs_sum > i128::from(i64::MAX) {
        return Err(TallyError::Overflow(format!(
            "the discrepancies' Σ |delta_credits| is {}.{:03}, past what a sum of amounts \
             holds (i64 thousandths); check the rows with the largest deltas",
            abs_sum / 1000,
            abs_sum % 1000
        )));
    }
    let abs_deltas: Vec<i64> = deltas.iter().map(|d| d.abs()).collect();
    let without_delta: Vec<bool> = rows.iter().map(|r| r.delta_credits.is_none()).collect();
    DataFrame::new(
        rows.len(),
        vec![
            Column::new("kind".into(), kinds),
            Column::new("account_id".into(), accounts),
            Column::new("delta".into(), deltas),
            Column::new("abs_delta".into(), abs_deltas),
            Column::new("without_delta".into(), without_delta),
        ],
    )
    .map_err(polars_err)
}

/// Count and Σ delta per kind, in the contract's kind order.
pub fn by_kind(rows: &[DiscrepancyRow]) -> Result<Vec<KindFigures>> {
    let grouped = frame(rows)?
        .lazy()
        .group_by([col("kind")])
        .agg([
            len().alias("count"),
            col("delta").sum().alias("delta"),
            col("without_delta").sum().alias("without_delta"),
        ])
        .collect()
        .map_err(polars_err)?;
    let names = grouped
        .column("kind")
        .and_then(|c| c.str().cloned())
        .map_err(polars_err)?;
    let counts = grouped
        .column("count")
        .and_then(|c| c.cast(&DataType::UInt64))
        .map_err(polars_err)?;
    let counts = counts.u64().map_err(polars_err)?;
    let deltas = grouped
        .column("delta")
        .and_then(|c| c.i64().cloned())
        .map_err(polars_err)?;
    let without_delta = grouped
        .column("without_delta")
        .and_then(|c| c.cast(&DataType::UInt64))
        .map_err(polars_err)?;
    let without_delta = without_delta.u64().map_err(polars_err)?;
    let mut figures: Vec<KindFigures> = (0..grouped.height())
        .filter_map(|i| {
            Some(KindFigures {
                kind: Kind::parse(names.get(i)?)?,
                count: counts.get(i).unwrap_or(0),
                delta: Milli(deltas.get(i).unwrap_or(0)),
                rows_without_delta: without_delta.get(i).unwrap_or(0),
            })
        })
        .collect();
    figures.sort_by_key(|f| f.kind);
    Ok(figures)
}

/// The `limit` accounts with the largest Σ |delta| (then most rows, then id).
pub fn top_accounts(rows: &[DiscrepancyRow], limit: usize) -> Result<Vec<AccountFigures>> {
    let top = frame(rows)?
        .lazy()
        .group_by([col("account_id")])
        .agg([
            len().alias("count"),
            col("abs_delta").sum().alias("abs_delta"),
        ])
        .sort_by_exprs(
            [col("abs_delta"), col("count"), col("account_id")],
            SortMultipleOptions::default().with_order_descending_multi([true, true, false]),
        )
        .limit(limit as IdxSize)
        .collect()
        .map_err(polars_err)?;
    let ids = top
        .column("account_id")
        .and_then(|c| c.str().cloned())
        .map_err(polars_err)?;
    let counts = top
        .column("count")
        .and_then(|c| c.cast(&DataType::UInt64))
        .map_err(polars_err)?;
    let counts = counts.u64().map_err(polars_err)?;
    let deltas = top
        .column("abs_delta")
        .and_then(|c| c.i64().cloned())
        .map_err(polars_err)?;
    Ok((0..top.height())
        .map(|i| AccountFigures {
            account_id: ids.get(i).unwrap_or_default().to_string(),
            count: counts.get(i).unwrap_or(0),
            abs_delta: Milli(deltas.get(i).unwrap_or(0)),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amount::OUTPUT_LIMIT_MILLIS;

    fn orphan(account: &str, delta: i64) -> DiscrepancyRow {
        DiscrepancyRow {
            kind: Kind::OrphanDebit,
            account_id: account.into(),
            event_id: None,
            entry_ids: vec![format!("d-{account}").into()],
            occurred_at: None,
            product: None,
            action: None,
            model: None,
            expected_credits: None,
            recorded_credits: Milli(delta),
            delta_credits: Some(Milli(delta)),
            entry_account_ids: Vec::new(),
        }
    }

    /// Each delta fits DECIMAL(18,3), but their sum by kind is made in i64: up to
    /// i64::MAX in Σ |delta| the figures are exact, and past it the run stops with an
    /// amount overflow (it was a panic inside polars' sum, exit 4 "internal error").
    #[test]
    fn deltas_sum_up_to_what_i64_holds_and_one_past_is_an_overflow() {
        let mut rows: Vec<DiscrepancyRow> = (0..9)
            .map(|i| orphan(&format!("a{i}"), OUTPUT_LIMIT_MILLIS))
            .collect();
        // 9 × (10^18 − 1) + the rest up to i64::MAX.
        let rest = i64::MAX - 9 * OUTPUT_LIMIT_MILLIS;
        rows.push(orphan("b", rest));
        let figures = by_kind(&rows).unwrap();
        assert_eq!(figures.len(), 1);
        assert_eq!(figures[0].delta, Milli(i64::MAX));
        assert_eq!(top_accounts(&rows, 1).unwrap().len(), 1);
        rows.push(orphan("c", 1));
        let past = by_kind(&rows).err().map(|e| e.to_string());
        assert_eq!(
            past.as_deref(),
            Some(
                "amount overflow: the discrepancies' Σ |delta_credits| is \
                 9223372036854775.808, past what a sum of amounts holds (i64 thousandths); \
                 check the rows with the largest deltas"
            )
        );
        assert!(top_accounts(&rows, 1).is_err());
    }
}
