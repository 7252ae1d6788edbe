//! Stage 5: compare what each event should have cost with what the ledger recorded
//! (contract section 5) and produce discrepancy rows.

use crate::amount::Milli;
use crate::dict::{Dicts, Ids};
use crate::error::Result;
use crate::model::{Debit, EntryKind, EventStatus, Id, Shared, Usage};
use crate::price::Price;
use crate::time::Micros;

/// Discrepancy kinds, in the order of the contract's table (which is also the row order).
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Kind {
    OrphanDebit,
    ManualAdjustment,
    AccountMismatch,
    UnpricedEvent,
    ChargedFailedEvent,
    MissingDebit,
    DuplicateDebit,
    AmountMismatch,
    ConflictingDuplicate,
    OverLimitUsage,
    /// The event occurred in a period closed by an earlier close and was not billed there
    /// (tally's addition to the contract's kinds; see the README).
    LateEvent,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::OrphanDebit,
        Kind::ManualAdjustment,
        Kind::AccountMismatch,
        Kind::UnpricedEvent,
        Kind::ChargedFailedEvent,
        Kind::MissingDebit,
        Kind::DuplicateDebit,
        Kind::AmountMismatch,
        Kind::ConflictingDuplicate,
        Kind::OverLimitUsage,
        Kind::LateEvent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::OrphanDebit => "orphan_debit",
            Kind::ManualAdjustment => "manual_adjustment",
            Kind::AccountMismatch => "account_mismatch",
            Kind::UnpricedEvent => "unpriced_event",
            Kind::ChargedFailedEvent => "charged_failed_event",
            Kind::MissingDebit => "missing_debit",
            Kind::DuplicateDebit => "duplicate_debit",
            Kind::AmountMismatch => "amount_mismatch",
            Kind::ConflictingDuplicate => "conflicting_duplicate",
            Kind::OverLimitUsage => "over_limit_usage",
            Kind::LateEvent => "late_event",
        }
    }

    /// What a row of this kind means, in a finance reader's words (summary.md and
    /// report.html print it beside the kind's figures).
    pub fn meaning(self) -> &'static str {
        match self {
            Kind::OrphanDebit => {
                "a debit or adjustment naming no valid usage event (absent, or its usage row \
                 rejected), or a debit naming none: credits taken with no action to show for them"
            }
            Kind::ManualAdjustment => "an adjustment naming no event: for review, not an error",
            Kind::AccountMismatch => {
                "an entry (a debit, adjustment or refund) on another account than its event's: \
                 one customer charged or refunded for another's action (the report's CSVs name \
                 that account in entry_account_ids)"
            }
            Kind::UnpricedEvent => {
                "the price book has no rate for the event, so it has no expected credits and \
                 no delta: add the rate and rerun"
            }
            Kind::ChargedFailedEvent => {
                "credits taken for an action that failed or was cancelled: refund them"
            }
            Kind::MissingDebit => {
                "an action that cost credits has no ledger entry: credits not taken"
            }
            Kind::DuplicateDebit => "one action charged two or more times: refund the extra",
            Kind::AmountMismatch => "an action charged another amount than the price book gives",
            Kind::ConflictingDuplicate => {
                "usage rows with one event id that differ (one copy is used); a row in addition \
                 to the event's own, if it has one (a matched event has none)"
            }
            Kind::OverLimitUsage => {
                "usage no grant covered (plan credits or any other grant) on a plan that \
                 blocks overage (the online system should have refused it; not billed); a row in \
                 addition to the event's own, if it has one, with the whole event's amounts"
            }
            Kind::LateEvent => {
                "an event of a period an earlier close already closed, billed in the \
                 account's period this close closes; a row in addition to the event's own, if it \
                 has one"
            }
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// One row of `discrepancies`. Its account, product, action and model are the run's
/// dictionary's shared strings and its ids are held inline (up to 24 bytes), not strings
/// of its own: a split run holds every discrepancy row until the end, and a String a
/// field made a row about 370–400 bytes with its heap strings, about 225 now with its
/// entry ids' vector (a 2M-event month with 600,000 discrepancy rows, in 4 groups: 1,060–
/// 1,069 MiB peak against 788–826 MiB, more than those bytes: the allocator's share of
/// many small strings freed across threads is a guess, not measured; benches/README.md,
/// "Profiles and experiments (2026-12-07, 20:30: discrepancy rows without strings of
/// their own)"). Rows decoded from a shard's `partial.bin` hold strings of their own.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiscrepancyRow {
    pub kind: Kind,
    pub account_id: Shared,
    pub event_id: Option<Id>,
    /// Sorted.
    pub entry_ids: Vec<Id>,
    pub occurred_at: Option<Micros>,
    pub product: Option<Shared>,
    pub action: Option<Shared>,
    pub model: Option<Shared>,
    pub expected_credits: Option<Milli>,
    pub recorded_credits: Milli,
    pub delta_credits: Option<Milli>,
    /// The accounts other than `account_id` that the row's entries were charged to (sorted,
    /// each once; empty unless an entry is another account's: `account_mismatch`). Not a
    /// contract column: the report's CSVs add it, so that the customer wrongly debited is
    /// named where finance reads the row.
    pub entry_account_ids: Vec<Shared>,
}

impl DiscrepancyRow {
    /// The contract's row order: (account_id, occurred_at nulls last, event_id nulls last,
    /// kind, entry_ids).
    pub fn sort_key(&self) -> impl Ord + '_ {
        (
            self.account_id.as_bytes(),
            (self.occurred_at.is_none(), self.occurred_at),
            (
                self.event_id.is_none(),
                self.event_id.as_deref().map(str::as_bytes),
            ),
            self.kind,
            &self.entry_ids,
        )
    }
}

/// The verdict on one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventVerdict {
    /// The first kind of the table that applies; `None` when matched or pending.
    pub primary: Option<Kind>,
    pub pending: bool,
    pub recorded: Milli,
    /// Entries that count as debits (`debit`, and `adjustment` attached to the event).
    pub debit_entries: usize,
}

/// Net recorded = Σ debit + adjustment − Σ refund.
pub fn net_recorded(entries: &[Debit]) -> Result<Milli> {
    Milli::sum(entries.iter().map(Debit::signed_credits))
}

/// Classify one event in the window against its ledger entries.
/// `settle_from` = as-of − settle: an event at or after it with no entries yet is pending.
pub fn classify(
    event: &Usage,
    price: Price,
    entries: &[Debit],
    settle_from: Micros,
) -> Result<EventVerdict> {
    let recorded = net_recorded(entries)?;
    let expected = price.expected();
    let pending = matches!(expected, Some(e) if e.is_positive())
        && entries.is_empty()
        && event.occurred_at >= settle_from;
    let debit_entries = entries
        .iter()
        .filter(|e| matches!(e.kind(), EntryKind::Debit | EntryKind::Adjustment))
        .count();
    let primary = if entries.iter().any(|e| e.account != event.account) {
        Some(Kind::AccountMismatch)
    } else if price == Price::Unpriced {
        Some(Kind::UnpricedEvent)
    } else if event.status() != EventStatus::Succeeded && recorded.is_positive() {
        Some(Kind::ChargedFailedEvent)
    } else if pending {
        None
    } else {
        let expected = expected.unwrap_or_default();
        if expected.is_positive() && entries.is_empty() {
            Some(Kind::MissingDebit)
        } else if debit_entries >= 2 && recorded > expected {
            Some(Kind::DuplicateDebit)
        } else if recorded != expected {
            Some(Kind::AmountMismatch)
        } else {
            None
        }
    };
    Ok(EventVerdict {
        primary,
        pending: pending && primary.is_none(),
        recorded,
        debit_entries,
    })
}

/// A discrepancy row for an event (all its entries together). `ids`: the usage and the
/// ledger ids of the rows.
pub fn event_row(
    kind: Kind,
    event: &Usage,
    price: Price,
    entries: &[Debit],
    recorded: Milli,
    dicts: &Dicts,
    ids: (&Ids, &Ids),
) -> Result<DiscrepancyRow> {
    let expected = price.expected();
    let delta = match expected {
        Some(e) => Some(recorded.checked_sub(e)?),
        None => None,
    };
    let mut entry_ids: Vec<Id> = entries
        .iter()
        .map(|e| ids.1.id(e.entry_id))
        .collect::<Result<_>>()?;
    entry_ids.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut entry_account_ids: Vec<Shared> = (entries.iter())
        .filter(|e| e.account != event.account)
        .map(|e| dicts.account(e.account).clone())
        .collect();
    entry_account_ids.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    entry_account_ids.dedup();
    Ok(DiscrepancyRow {
        kind,
        account_id: dicts.account(event.account).clone(),
        event_id: Some(ids.0.id(event.id)?),
        entry_ids,
        occurred_at: Some(event.occurred_at),
        product: Some(dicts.product(event.sku).clone()),
        action: Some(dicts.action(event.sku).clone()),
        model: dicts.model(event.sku).cloned(),
        expected_credits: expected,
        recorded_credits: recorded,
        delta_credits: delta,
        entry_account_ids,
    })
}

/// The kind for a ledger entry attached to no event, or `None` for a refund (counted only).
pub fn unattached_kind(entry: &Debit) -> Option<Kind> {
    match (entry.kind(), entry.has_event()) {
        (EntryKind::Refund, _) => None,
        (EntryKind::Adjustment, false) => Some(Kind::ManualAdjustment),
        (EntryKind::Debit | EntryKind::Adjustment, _) => Some(Kind::OrphanDebit),
    }
}

/// A discrepancy row for one unattached entry.
pub fn entry_row(kind: Kind, entry: &Debit, dicts: &Dicts, ids: &Ids) -> Result<DiscrepancyRow> {
    Ok(DiscrepancyRow {
        kind,
        account_id: dicts.account(entry.account).clone(),
        event_id: match entry.has_event() {
            true => Some(ids.id(entry.event_id)?),
            false => None,
        },
        entry_ids: vec![ids.id(entry.entry_id)?],
        occurred_at: None,
        product: None,
        action: None,
        model: None,
        expected_credits: Some(Milli::ZERO),
        recorded_credits: entry.credits(),
        delta_credits: Some(entry.credits()),
        entry_account_ids: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dict::DictBuilder;
    use crate::model::{compact_rows, DebitRow, RowRef, UsageRow};

    const SETTLE_FROM: Micros = 1_000;

    /// What summary.md and report.html say each kind means is held to the contract's
    /// section 5 table, row by row: the contract's "when" (quoted) against the words of the
    /// meaning that carry each of its conditions. Every kind has a row (`late_event`, not
    /// one of the contract's, against the README's rule).
    #[test]
    fn each_kind_means_what_the_contract_says() {
        let contract: [(Kind, &str, &[&str]); 11] = [
            (
                Kind::OrphanDebit,
                "a debit/adjustment entry whose `event_id` is not in usage (or a debit with \
                 null `event_id`)",
                &[
                    "a debit or adjustment",
                    "no valid usage event",
                    "a debit naming none",
                ],
            ),
            (
                Kind::ManualAdjustment,
                "an `adjustment` with null `event_id` (reported, not an error)",
                &["an adjustment naming no event", "not an error"],
            ),
            (
                Kind::AccountMismatch,
                "an entry's `account_id` differs from its event's",
                &["an entry", "another account than its event's"],
            ),
            (
                Kind::UnpricedEvent,
                "the event has no rate (section 3)",
                &["no rate for the event"],
            ),
            (
                Kind::ChargedFailedEvent,
                "the event is not `succeeded` and its net recorded > 0",
                &["credits taken", "failed or was cancelled"],
            ),
            (
                Kind::MissingDebit,
                "expected > 0 and the event has no entries at all",
                &["cost credits", "no ledger entry"],
            ),
            (
                Kind::DuplicateDebit,
                "≥ 2 `debit` entries and net recorded > expected",
                &["two or more times", "the extra"],
            ),
            (
                Kind::AmountMismatch,
                "net recorded ≠ expected",
                &["another amount than the price book gives"],
            ),
            (
                Kind::ConflictingDuplicate,
                "see usage above; reported in addition to the kinds above",
                &["one event id that differ", "in addition to the event's own"],
            ),
            (
                Kind::OverLimitUsage,
                "see section 4; reported in addition to the kinds above",
                &[
                    "no grant covered",
                    "blocks overage",
                    "in addition to the event's own",
                ],
            ),
            (
                Kind::LateEvent,
                "(not a kind of the contract: tally's own, README \"Late events\")",
                &[
                    "already closed",
                    "billed in the account's period this close closes",
                ],
            ),
        ];
        for (kind, when, words) in contract {
            for word in words {
                assert!(
                    kind.meaning().contains(word),
                    "{}: the contract says \"{when}\"; the meaning lacks {word:?}: {}",
                    kind.name(),
                    kind.meaning()
                );
            }
        }
        let covered: Vec<Kind> = contract.iter().map(|(kind, _, _)| *kind).collect();
        assert!(Kind::ALL.iter().all(|kind| covered.contains(kind)));
    }

    fn event(status: EventStatus, occurred_at: Micros) -> UsageRow {
        UsageRow {
            event_id: "e1".into(),
            account_id: "a".into(),
            quantity: Milli::from_units(5),
            status,
            occurred_at,
            ..UsageRow::sample(0, "e1")
        }
    }

    fn entry(id: &str, kind: EntryKind, credits: i64, account: &str) -> DebitRow {
        DebitRow {
            at: RowRef { file: 0, row: 0 },
            entry_id: id.into(),
            account_id: account.into(),
            event_id: Some("e1".into()),
            kind,
            credits: Milli::from_units(credits),
            recorded_at: 0,
        }
    }

    fn charged(c: i64) -> Price {
        Price::Charged(Milli::from_units(c))
    }

    /// The verdict on an event with strings, through its compact form.
    fn verdict(ev: &UsageRow, price: Price, entries: &[DebitRow]) -> EventVerdict {
        let dicts = DictBuilder::new(["a", "b"].into_iter());
        let (usage, _, debits, _) = compact_rows(std::slice::from_ref(ev), entries, &dicts);
        classify(&usage[0], price, &debits, SETTLE_FROM).unwrap()
    }

    fn kind_of(ev: &UsageRow, price: Price, entries: &[DebitRow]) -> Option<Kind> {
        verdict(ev, price, entries).primary
    }

    #[test]
    fn the_first_kind_of_the_table_wins() {
        let ok = event(EventStatus::Succeeded, 10);
        let wrong_account = [entry("d1", EntryKind::Debit, 40, "b")];
        assert_eq!(
            kind_of(&ok, Price::Unpriced, &wrong_account),
            Some(Kind::AccountMismatch)
        );
        assert_eq!(
            kind_of(&ok, Price::Unpriced, &[]),
            Some(Kind::UnpricedEvent)
        );
        let failed = event(EventStatus::Failed, 10);
        let d = [entry("d1", EntryKind::Debit, 40, "a")];
        assert_eq!(
            kind_of(&failed, Price::NotChargeable, &d),
            Some(Kind::ChargedFailedEvent)
        );
        assert_eq!(kind_of(&ok, charged(40), &[]), Some(Kind::MissingDebit));
        let twice = [
            entry("d1", EntryKind::Debit, 40, "a"),
            entry("d2", EntryKind::Adjustment, 40, "a"),
        ];
        assert_eq!(
            kind_of(&ok, charged(40), &twice),
            Some(Kind::DuplicateDebit)
        );
        assert_eq!(kind_of(&ok, charged(41), &d), Some(Kind::AmountMismatch));
        assert_eq!(kind_of(&ok, charged(40), &d), None);
    }

    #[test]
    fn refunds_net_out() {
        let failed = event(EventStatus::Failed, 10);
        let refunded = [
            entry("d1", EntryKind::Debit, 40, "a"),
            entry("r1", EntryKind::Refund, 40, "a"),
        ];
        assert_eq!(kind_of(&failed, Price::NotChargeable, &refunded), None);
        let over_refunded = [entry("r1", EntryKind::Refund, 5, "a")];
        assert_eq!(
            kind_of(&failed, Price::NotChargeable, &over_refunded),
            Some(Kind::AmountMismatch)
        );
    }

    #[test]
    fn recent_events_without_entries_are_pending() {
        let recent = event(EventStatus::Succeeded, SETTLE_FROM);
        let v = verdict(&recent, charged(40), &[]);
        assert_eq!((v.primary, v.pending), (None, true));
        let older = event(EventStatus::Succeeded, SETTLE_FROM - 1);
        let v = verdict(&older, charged(40), &[]);
        assert_eq!((v.primary, v.pending), (Some(Kind::MissingDebit), false));
        // expected 0: never pending, matched.
        let v = verdict(&recent, charged(0), &[]);
        assert_eq!((v.primary, v.pending), (None, false));
    }

    #[test]
    fn unattached_entries() {
        let dicts = DictBuilder::new(["a"].into_iter());
        let kind = |e: &DebitRow| {
            let (_, _, debits, _) = compact_rows(&[], std::slice::from_ref(e), &dicts);
            unattached_kind(&debits[0])
        };
        let mut e = entry("x", EntryKind::Debit, 3, "a");
        e.event_id = None;
        assert_eq!(kind(&e), Some(Kind::OrphanDebit));
        e.kind = EntryKind::Adjustment;
        assert_eq!(kind(&e), Some(Kind::ManualAdjustment));
        e.event_id = Some("gone".into());
        assert_eq!(kind(&e), Some(Kind::OrphanDebit));
        e.kind = EntryKind::Refund;
        assert_eq!(kind(&e), None);
    }

    #[test]
    fn rows_carry_the_strings_of_their_codes() {
        let builder = DictBuilder::new(["a"].into_iter());
        let ev = UsageRow {
            model: Some("veo-3".into()),
            ..event(EventStatus::Succeeded, 10)
        };
        let entries = [
            entry("d2", EntryKind::Debit, 40, "a"),
            entry("d1", EntryKind::Debit, 1, "a"),
        ];
        let (usage, usage_ids, debits, debit_ids) =
            compact_rows(std::slice::from_ref(&ev), &entries, &builder);
        let dicts = builder.freeze();
        let row = event_row(
            Kind::AmountMismatch,
            &usage[0],
            charged(40),
            &debits,
            Milli::from_units(41),
            &dicts,
            (&usage_ids, &debit_ids),
        )
        .unwrap();
        assert_eq!(&*row.account_id, "a");
        assert_eq!(row.event_id.as_deref(), Some("e1"));
        assert_eq!(row.entry_ids, ["d1", "d2"]);
        assert_eq!(row.product.as_deref(), Some("video"));
        assert_eq!(row.action.as_deref(), Some("generate"));
        assert_eq!(row.model.as_deref(), Some("veo-3"));
        assert_eq!(row.delta_credits, Some(Milli::from_units(1)));
        // The strings are the run's dictionary's, shared, not copies of their own.
        let shared = std::sync::Arc::ptr_eq;
        assert!(shared(&row.account_id, dicts.account(usage[0].account)));
        assert!(shared(
            row.product.as_ref().unwrap(),
            dicts.product(usage[0].sku)
        ));
        assert!(shared(
            row.action.as_ref().unwrap(),
            dicts.action(usage[0].sku)
        ));
        assert!(shared(
            row.model.as_ref().unwrap(),
            dicts.model(usage[0].sku).unwrap()
        ));
        let entry = entry_row(Kind::OrphanDebit, &debits[0], &dicts, &debit_ids).unwrap();
        assert!(shared(&entry.account_id, dicts.account(debits[0].account)));
        assert_eq!(entry.entry_ids, ["d2"]);
        // What README's memory bounds count a discrepancy row at (with its entry id).
        assert!(std::mem::size_of::<DiscrepancyRow>() <= 200);
    }
}
