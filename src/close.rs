//! Stage 6: period close (contract section 6 and 7 "Close"): invoices, invoice lines,
//! renewals, and the next period's allocations and grants.

use crate::amount::Milli;
use crate::consume::{GrantBalance, PeriodConsumption};
use crate::error::{Result, TallyError};
use crate::model::*;
use crate::price::Exact;
use crate::pricebook::{Overage, Plan, PriceBook};
use crate::time::{next_anniversary, Micros};
use chrono::{TimeZone, Utc};
use sha2::Digest as _;
use std::collections::BTreeMap;

/// One row of `invoices` (its account and plan shared with its allocation's).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InvoiceRow {
    pub invoice_id: String,
    pub account_id: Shared,
    pub plan_id: Shared,
    pub period_start: Micros,
    pub period_end: Micros,
    pub currency: String,
    pub plan_price_minor: i64,
    pub included_credits: Milli,
    pub credits_used: Milli,
    /// Consumed from each grant kind (rollover, plan, promo, compensation, top_up).
    pub credits_from: [Milli; 5],
    pub overage_credits: Milli,
    pub overage_amount_minor: i64,
    pub total_minor: i64,
    pub recorded_credits: Milli,
    pub unreconciled_credits: Milli,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InvoiceLineRow {
    /// Shared by the lines of an invoice, and the labels by every line that names them (the
    /// run's dictionary words): no string allocated per line (19M lines at 100M events).
    pub invoice_id: crate::model::Shared,
    pub product: crate::model::Shared,
    pub action: crate::model::Shared,
    pub model: Option<crate::model::Shared>,
    pub event_count: i64,
    pub quantity: Milli,
    pub credits: Milli,
}

/// One row of `renewals` (its account and plan shared with its allocation's).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RenewalRow {
    pub account_id: Shared,
    pub period_start: Micros,
    pub period_end: Micros,
    pub next_period_start: Option<Micros>,
    pub next_period_end: Option<Micros>,
    pub plan_id: Shared,
    pub plan_credits_unused: Milli,
    pub rollover_credits: Milli,
    pub expired_credits: Milli,
    pub next_included_credits: Option<Milli>,
    pub carried_grant_credits: Milli,
}

/// Compact UTC stamp used in generated ids and `{as_of}` folder names
/// (`20261101T000000Z`). An instant with a fraction of a second keeps it
/// (`20261101T000000.5Z`): two periods of one account starting within one second had one
/// invoice id, and their invoice lines could not be told apart. Whole seconds, every
/// anniversary of a whole-second anchor, read as they always did.
pub fn compact_stamp(t: Micros) -> String {
    let Some(second) = second_of(t) else {
        return t.to_string();
    };
    match t.rem_euclid(1_000_000) {
        0 => format!("{second}Z"),
        micros => {
            let fraction = format!("{micros:06}");
            format!("{second}.{}Z", fraction.trim_end_matches('0'))
        }
    }
}

/// [`compact_stamp`] of the second `t` falls in (its fraction dropped, as every stamp was
/// before 2026-12-07).
fn whole_second_stamp(t: Micros) -> String {
    second_of(t).map_or_else(|| t.to_string(), |second| format!("{second}Z"))
}

/// The second `t` falls in, `20261101T000000` (chrono's `%S` is the floor, before 1970
/// too); `None` outside chrono's range.
fn second_of(t: Micros) -> Option<String> {
    let instant = Utc.timestamp_micros(t).single()?;
    Some(instant.format("%Y%m%dT%H%M%S").to_string())
}

/// Deterministic invoice id from account and period.
pub fn invoice_id(account_id: &str, period_start: Micros) -> String {
    format!("INV-{account_id}-{}", compact_stamp(period_start))
}

/// Deterministic id of the rollover grant created when a period renews:
/// `rollover-{account_id}-{stamp}`. Where that would pass the input limit on strings
/// ([`crate::load::MAX_STRING_BYTES`]: an account id of 4071 bytes or more at a whole-second
/// stamp, fewer with a fraction), the account id is written as its sha256
/// (`rollover-sha256:{64 hex}-{stamp}`): `grants_next` is next period's grants input, and a
/// longer id there is `bad_value`, its credits lost. An account id starting `sha256:` is
/// written so too, so that no account's plain id is another's hashed one.
pub fn rollover_grant_id(account_id: &str, next_period_start: Micros) -> String {
    let stamp = compact_stamp(next_period_start);
    let id = format!("rollover-{account_id}-{stamp}");
    if id.len() <= crate::load::MAX_STRING_BYTES && !account_id.starts_with(HASHED) {
        return id;
    }
    let digest = sha2::Sha256::digest(account_id.as_bytes());
    format!("rollover-{HASHED}{}-{stamp}", hex::encode(digest))
}

/// What a rollover id's hashed account id starts with.
const HASHED: &str = "sha256:";

/// overage_amount_minor = round half-even(overage × price_per_credit × 10^exponent); 0 for block.
/// The product is exact (unbounded integers): `Decimal` would round a product past its 28
/// digits first (overage 0.001 at 5.000000000000000000000000001 USD a credit is 0.5 cents
/// and a bit, 1 cent; rounded twice it was 0). Past i64 minor units, an overflow naming
/// the invoice (`invoice_id`), the figures and the plan (`plan_id`) to check, as the
/// invoice total's does.
pub fn overage_amount_minor(
    book: &PriceBook,
    plan: &Plan,
    overage: Milli,
    (invoice_id, plan_id): (&str, &str),
) -> Result<i64> {
    match &plan.overage {
        Overage::Block => Ok(0),
        Overage::PricePerCredit(price) => {
            let amount = Exact::of(overage.to_decimal()).times(&Exact::of(*price));
            i64::try_from(amount.half_even_at(book.exponent)).map_err(|_| {
                TallyError::Overflow(format!(
                    "invoice {invoice_id}: its overage of {overage} credits at {price} {} a \
                     credit passes the largest amount in minor units ({}); check plan \
                     {plan_id}'s overage price_per_credit in the price book (and the account's \
                     usage), then rerun",
                    book.currency,
                    i64::MAX
                ))
            })
        }
    }
}

/// What closing one period produced.
pub struct ClosedPeriod {
    pub invoice: InvoiceRow,
    pub lines: Vec<InvoiceLineRow>,
    pub renewal: RenewalRow,
    pub next_allocation: Option<AllocationRow>,
    /// The rollover grant for the next period, when renewing with credits to roll.
    pub rollover_grant: Option<GrantRow>,
}

/// An invoice line's key: (product, action, (model is null, model)); null models sort last.
pub type LineKey = (
    crate::model::Shared,
    crate::model::Shared,
    (bool, Option<crate::model::Shared>),
);
/// (event count, Σ quantity, Σ credits) of one line.
pub type LineTotals = (i64, Milli, Milli);

/// Inputs of `close_period` that come from pricing and reconciliation.
pub struct PeriodFigures<'a> {
    pub consumption: &'a PeriodConsumption,
    /// (product, action, model) → (event count, quantity, credits) of succeeded priced events.
    pub lines: BTreeMap<LineKey, LineTotals>,
    pub credits_used: Milli,
    pub recorded: Milli,
}

/// Close one account-period: its invoice and lines, its renewal, and the next period's
/// allocation and rollover grant.
pub fn close_period(
    book: &PriceBook,
    allocation: &AllocationRow,
    figures: PeriodFigures<'_>,
) -> Result<ClosedPeriod> {
    let plan = &book.plans[&*allocation.plan_id];
    let invoice = invoice_row(book, plan, allocation, &figures)?;
    let lines = invoice_lines(&invoice.invoice_id, figures.lines);
    let renews = allocation.status == AllocationStatus::Active && plan.refresh;
    let left = Leftover::of(figures.consumption, allocation.period_end)?;
    let rollover = match renews {
        true => left.plan_unused.min(plan.rollover_cap),
        false => Milli::ZERO,
    };
    let expired = left
        .grants_expired
        .checked_add(left.plan_unused.checked_sub(rollover)?)?;
    let anchor = allocation.billing_anchor.unwrap_or(allocation.period_start);
    let next_end = match renews {
        true => Some(next_period_end(allocation, anchor)?),
        false => None,
    };
    let period_end = allocation.period_end;
    let renewal = RenewalRow {
        account_id: allocation.account_id.clone(),
        period_start: allocation.period_start,
        period_end,
        next_period_start: next_end.map(|_| period_end),
        next_period_end: next_end,
        plan_id: allocation.plan_id.clone(),
        plan_credits_unused: left.plan_unused,
        rollover_credits: rollover,
        expired_credits: expired,
        next_included_credits: next_end.map(|_| plan.included_credits),
        carried_grant_credits: left.grants_carried,
    };
    let next_allocation = next_end.map(|end| AllocationRow {
        at: allocation.at,
        account_id: allocation.account_id.clone(),
        plan_id: allocation.plan_id.clone(),
        period_start: period_end,
        period_end: end,
        included_credits: plan.included_credits,
        billing_anchor: Some(anchor),
        status: AllocationStatus::Active,
    });
    let rollover_grant = match next_end {
        Some(end) if rollover.is_positive() => Some(GrantRow {
            at: allocation.at,
            grant_id: rollover_grant_id(&allocation.account_id, period_end),
            account_id: allocation.account_id.clone(),
            kind: GrantKind::Rollover,
            credits: rollover,
            effective_at: period_end,
            expires_at: Some(end),
            priority: None,
        }),
        _ => None,
    };
    Ok(ClosedPeriod {
        invoice,
        lines,
        renewal,
        next_allocation,
        rollover_grant,
    })
}

/// The invoice of a closed period: the plan's price plus its overage.
fn invoice_row(
    book: &PriceBook,
    plan: &Plan,
    allocation: &AllocationRow,
    figures: &PeriodFigures<'_>,
) -> Result<InvoiceRow> {
    let consumption = figures.consumption;
    let id = invoice_id(&allocation.account_id, allocation.period_start);
    let whose = (id.as_str(), &*allocation.plan_id);
    let overage_minor = overage_amount_minor(book, plan, consumption.overage, whose)?;
    let total_minor = plan
        .price_minor
        .checked_add(overage_minor)
        .ok_or_else(|| {
            TallyError::Overflow(format!(
                "invoice {id} total: plan {} price {} + overage {overage_minor} minor units of {} passes \
                 the largest amount in minor units ({}); check plan {}'s price and overage price in \
                 the price book, then rerun",
                allocation.plan_id,
                plan.price_minor,
                book.currency,
                i64::MAX,
                allocation.plan_id,
            ))
        })?;
    Ok(InvoiceRow {
        invoice_id: id,
        account_id: allocation.account_id.clone(),
        plan_id: allocation.plan_id.clone(),
        period_start: allocation.period_start,
        period_end: allocation.period_end,
        currency: book.currency.clone(),
        plan_price_minor: plan.price_minor,
        included_credits: allocation.included_credits,
        credits_used: figures.credits_used,
        credits_from: consumption.consumed,
        overage_credits: consumption.overage,
        overage_amount_minor: overage_minor,
        total_minor,
        recorded_credits: figures.recorded,
        unreconciled_credits: figures.recorded.checked_sub(figures.credits_used)?,
    })
}

/// An invoice's lines, in the order of `lines`' keys.
fn invoice_lines(invoice_id: &str, lines: BTreeMap<LineKey, LineTotals>) -> Vec<InvoiceLineRow> {
    let invoice_id = crate::model::Shared::from(invoice_id);
    lines
        .into_iter()
        .map(
            |((product, action, (_, model)), (count, quantity, credits))| InvoiceLineRow {
                invoice_id: invoice_id.clone(),
                product,
                action,
                model,
                event_count: count,
                quantity,
                credits,
            },
        )
        .collect()
}

/// What a period's grants have left at its end.
struct Leftover {
    /// Left of the plan's credits.
    plan_unused: Milli,
    /// Left of the other grants that expire by the period end.
    grants_expired: Milli,
    /// Left of the other grants that do not: carried to the next period.
    grants_carried: Milli,
}

impl Leftover {
    fn of(consumption: &PeriodConsumption, period_end: Micros) -> Result<Leftover> {
        let mut left = Leftover {
            plan_unused: Milli::ZERO,
            grants_expired: Milli::ZERO,
            grants_carried: Milli::ZERO,
        };
        for g in &consumption.grants_after {
            let sum = match (g.is_plan(), expires_by(g, period_end)) {
                (true, _) => &mut left.plan_unused,
                (false, true) => &mut left.grants_expired,
                (false, false) => &mut left.grants_carried,
            };
            *sum = sum.checked_add(g.remaining)?;
        }
        Ok(left)
    }
}

/// The end of a renewed period's next period: the anniversary of its billing anchor after
/// its end.
fn next_period_end(allocation: &AllocationRow, anchor: Micros) -> Result<Micros> {
    // The next period is the next close's input: past year 9999 it could not be read
    // back (nor written in RFC 3339).
    next_anniversary(anchor, allocation.period_end)
        .filter(|&end| end < crate::time::END_OF_INSTANTS)
        .ok_or_else(|| TallyError::Input {
            file: "allocations".into(),
            message: format!(
                "account \"{}\" period starting {}: its next period would end past year \
                 9999, which an input cannot hold; check its period_end and billing_anchor, \
                 then rerun",
                allocation.account_id,
                crate::time::format_instant(allocation.period_start),
            ),
        })
}

/// A grant whose `expires_at` ≤ the period end expires with it.
fn expires_by(g: &GrantBalance, period_end: Micros) -> bool {
    g.expires_at.is_some_and(|e| e <= period_end)
}

/// The account's grants for the next period's input, after its last closed period: every
/// grant with credits left that does not expire by `last_period_end` (grants effective at or
/// after it are unchanged), plus the rollover grant of the last renewal.
///
/// An input grant that is the rollover this close writes (its id, kind and start: this
/// close's own `grants_next` fed back into its inputs, then the close run again with
/// `--force`) is not carried: the rollover is worked out again, and written once (or not
/// at all, when the period no longer renews). Any other input grant with the rollover's id
/// is left here for the run-wide check of `grants_next`'s ids (`pipeline`), which refuses it
/// whichever account it is of.
pub fn grants_next(
    balances: &[GrantBalance],
    last_period_end: Micros,
    rollover: Option<GrantRow>,
) -> thin_vec::ThinVec<GrantRow> {
    let mut next: thin_vec::ThinVec<GrantRow> = balances
        .iter()
        .filter(|g| !g.is_plan() && g.remaining.is_positive() && !expires_by(g, last_period_end))
        .filter_map(|g| {
            g.source.as_ref().map(|row| GrantRow {
                credits: g.remaining,
                ..row.clone()
            })
        })
        .filter(|row| !is_own_rollover(row, last_period_end))
        .collect();
    next.extend(rollover);
    next
}

/// Whether `row` is a rollover grant as a close writes it: its id names its own account
/// and start (see [`rollover_grant_id`]).
pub fn is_written_rollover(row: &GrantRow) -> bool {
    is_own_rollover(row, row.effective_at)
}

/// Whether `row` is the rollover grant a close of its account's period ending
/// `period_end` writes (see [`rollover_grant_id`]).
fn is_own_rollover(row: &GrantRow, period_end: Micros) -> bool {
    row.kind == GrantKind::Rollover
        && row.effective_at == period_end
        && (row.grant_id == rollover_grant_id(&row.account_id, period_end)
            || row.grant_id == rollover_id_before_fractions(&row.account_id, period_end))
}

/// The id tally gave the rollover of a period ending `period_end` before ids kept a
/// fraction of a second (2026-12-07): a grants_next written then and fed back to a close
/// of the same period is still that close's own rollover, replaced and not carried beside
/// the new one (twice the credits). The same id as [`rollover_grant_id`]'s at a whole second.
fn rollover_id_before_fractions(account_id: &str, period_end: Micros) -> String {
    format!("rollover-{account_id}-{}", whole_second_stamp(period_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rollover id is as long as an input's strings may be at an account id of 4070
    /// bytes (whole-second stamp); one byte more and the account id is written as its
    /// sha256, within the limit, and still one id per account and period.
    #[test]
    fn rollover_ids_stay_within_the_input_limit() {
        let start = crate::time::parse_instant("2026-12-01T00:00:00Z").unwrap();
        let at_limit = "a".repeat(4070);
        let id = rollover_grant_id(&at_limit, start);
        assert_eq!(id, format!("rollover-{at_limit}-20261201T000000Z"));
        assert_eq!(id.len(), crate::load::MAX_STRING_BYTES);
        let past = "a".repeat(4071);
        let hashed = rollover_grant_id(&past, start);
        assert_eq!(
            hashed,
            format!(
                "rollover-sha256:{}-20261201T000000Z",
                hex::encode(sha2::Sha256::digest(past.as_bytes()))
            )
        );
        assert!(hashed.len() < 100);
        // An account named as another's hashed id is hashed itself: no two accounts share
        // a rollover id.
        let lookalike = format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(past.as_bytes()))
        );
        let its_own = rollover_grant_id(&lookalike, start);
        assert_ne!(its_own, hashed);
        assert_eq!(
            its_own,
            format!(
                "rollover-sha256:{}-20261201T000000Z",
                hex::encode(sha2::Sha256::digest(lookalike.as_bytes()))
            )
        );
    }

    /// A one-plan price book in `currency` with overage at `price_per_credit`.
    fn overage_book(currency: &str, price_per_credit: &str) -> PriceBook {
        let text = format!(
            "currency = \"{currency}\"\n[plans.pro]\nprice = \"10\"\n\
             included_credits = \"100\"\n\
             overage = {{ price_per_credit = \"{price_per_credit}\" }}\n"
        );
        PriceBook::parse(&text, "pricebook.toml").unwrap()
    }

    /// Contract 7, Close: "`overage_amount_minor` = round half-even(overage_credits ×
    /// price_per_credit × 10^exponent), once per invoice", with section 3's "All arithmetic
    /// is exact decimal": the product is not rounded before that one rounding.
    #[test]
    fn overage_money_is_rounded_once_from_the_exact_product() {
        let minor = |currency: &str, price: &str, overage_millis: i64| {
            let book = overage_book(currency, price);
            overage_amount_minor(
                &book,
                &book.plans["pro"],
                Milli(overage_millis),
                ("INV", "pro"),
            )
            .unwrap()
        };
        let cents = |price: &str, overage_millis: i64| minor("USD", price, overage_millis);
        // 0.001 credits at 5 USD: 0.5 cents, a tie, to the even 0.
        assert_eq!(cents("5", 1), 0);
        assert_eq!(cents("15", 1), 2);
        // A hair past the tie (the product has 30 places, past Decimal's 28): 1 cent. Rounded
        // to 28 places first it was the tie, and 0.
        assert_eq!(cents("5.000000000000000000000000001", 1), 1);
        assert_eq!(cents("4.999999999999999999999999999", 1), 0);
        assert_eq!(cents("0.05", 1_234_567), 6173);
        // 999,999,999,999.999 credits at a price of only 14 decimals: 499999999999998.5 cents
        // and a hair, so ...999 (rust_decimal's product, cut to 96 bits, was the tie: ...998).
        assert_eq!(
            cents("4.99999999999999", 999_999_999_999_999),
            499_999_999_999_999
        );
        // Yen have no minor unit, dinars three: ties go to even there too.
        assert_eq!(minor("JPY", "5", 500), 2);
        assert_eq!(minor("JPY", "5", 300), 2);
        assert_eq!(minor("JPY", "5.000000000000000000000000001", 100), 1);
        assert_eq!(minor("BHD", "0.0005", 1_000), 0);
        assert_eq!(minor("BHD", "0.0015", 1_000), 2);
    }

    const NOV: Micros = 1_761_955_200_000_000; // 2025-11-01T00:00:00Z
    const DEC: Micros = 1_764_547_200_000_000; // 2025-12-01T00:00:00Z
    const JAN: Micros = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

    fn grant(id: &str, kind: GrantKind, units: i64, effective_at: Micros) -> GrantRow {
        GrantRow {
            at: RowRef { file: 0, row: 0 },
            grant_id: id.into(),
            account_id: "acct".into(),
            kind,
            credits: Milli::from_units(units),
            effective_at,
            expires_at: None,
            priority: None,
        }
    }

    fn rollover(units: i64) -> GrantRow {
        GrantRow {
            expires_at: Some(JAN),
            ..grant(
                &rollover_grant_id("acct", DEC),
                GrantKind::Rollover,
                units,
                DEC,
            )
        }
    }

    fn balances(rows: &[GrantRow]) -> Vec<GrantBalance> {
        rows.iter().map(GrantBalance::from_row).collect()
    }

    #[test]
    fn the_instants_are_the_months_they_are_named_after() {
        assert_eq!(compact_stamp(NOV), "20251101T000000Z");
        assert_eq!(compact_stamp(DEC), "20251201T000000Z");
        assert_eq!(compact_stamp(JAN), "20260101T000000Z");
        // A fraction of a second is kept, without trailing zeros; before 1970 too.
        assert_eq!(compact_stamp(NOV + 500_000), "20251101T000000.5Z");
        assert_eq!(compact_stamp(NOV + 1), "20251101T000000.000001Z");
        assert_eq!(compact_stamp(-1), "19691231T235959.999999Z");
        assert_ne!(invoice_id("s", NOV), invoice_id("s", NOV + 500_000));
    }

    /// A close run again over inputs holding its own grants_next: the fed-back rollover (of
    /// a stale amount here) is replaced by the one worked out again, not carried beside it.
    #[test]
    fn a_fed_back_rollover_is_replaced_by_the_one_worked_out_again() {
        let inputs = [grant("topup", GrantKind::TopUp, 5, NOV), rollover(40)];
        let next = grants_next(&balances(&inputs), DEC, Some(rollover(56)));
        assert_eq!(next, vec![inputs[0].clone(), rollover(56)]);
        // The period no longer renews: no rollover at all, the fed-back one neither.
        let next = grants_next(&balances(&inputs), DEC, None);
        assert_eq!(next, vec![inputs[0].clone()]);
    }

    /// A rollover of a period ending within a second, fed back from a grants_next written
    /// before ids kept the fraction (its id floored to the second), is still this close's
    /// own: replaced, not carried beside the new one (a review found 200 credits carried
    /// against a cap of 100).
    #[test]
    fn a_fed_back_rollover_named_before_fractions_is_replaced() {
        let end = DEC + 500_000;
        let fed_back = GrantRow {
            effective_at: end,
            ..grant(
                &rollover_grant_id("acct", DEC),
                GrantKind::Rollover,
                40,
                end,
            )
        };
        assert_eq!(fed_back.grant_id, "rollover-acct-20251201T000000Z");
        let new = GrantRow {
            grant_id: rollover_grant_id("acct", end),
            credits: Milli::from_units(56),
            ..fed_back.clone()
        };
        assert_eq!(new.grant_id, "rollover-acct-20251201T000000.5Z");
        let next = grants_next(
            &balances(std::slice::from_ref(&fed_back)),
            end,
            Some(new.clone()),
        );
        assert_eq!(next, vec![new]);
    }

    /// Only the rollover of this close is replaced: another rollover grant (an earlier
    /// period's, or one starting at another instant) is carried as any grant is.
    #[test]
    fn other_rollover_grants_are_carried() {
        let inputs = [
            grant(&rollover_grant_id("acct", NOV), GrantKind::Rollover, 7, NOV),
            grant(&rollover_grant_id("acct", DEC), GrantKind::Rollover, 8, NOV),
        ];
        let next = grants_next(&balances(&inputs), DEC, None);
        assert_eq!(next, inputs.to_vec());
    }

    /// Another grant with the rollover's id is kept beside it here: the run-wide check of
    /// grants_next's ids refuses it (`collect::check_grants_next_ids_are_unique`).
    #[test]
    fn another_grant_with_the_rollovers_id_is_left_to_the_run_wide_check() {
        let promo = grant(&rollover_grant_id("acct", DEC), GrantKind::Promo, 3, NOV);
        let next = grants_next(
            &balances(std::slice::from_ref(&promo)),
            DEC,
            Some(rollover(56)),
        );
        assert_eq!(next, vec![promo, rollover(56)]);
        assert!(is_written_rollover(&next[1]) && !is_written_rollover(&next[0]));
    }
}
