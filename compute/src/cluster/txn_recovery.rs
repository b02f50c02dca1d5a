//! Recovery of cross-partition transactions whose coordinator went silent (the participant
//! side's half of the protocol in `service/txn.rs`): a partition's owner resolves its stale
//! intents from their records, and the janitor cleans up records dead coordinators left.
//! Pure etcd and engine work: nothing here speaks gRPC.

use std::time::Duration;
use strata_engine::txn::TXN_TIMEOUT_MS;
use strata_manifest::etcd::TxnState;

/// Resolves the intents of `db` whose coordinator went silent: any locked here for longer than
/// `TXN_TIMEOUT_MS` is decided from its record (a pending one is aborted first).
pub(crate) async fn resolve_stale_intents(
    etcd: &strata_manifest::etcd::Etcd,
    db: &strata_engine::Db,
) {
    for (id, age) in db.prepared_txns() {
        if age < Duration::from_millis(TXN_TIMEOUT_MS) {
            continue;
        }
        let commit = match etcd.txn_decide(&id, TxnState::Aborted).await {
            Ok(Some(TxnState::Committed)) => true,
            Ok(Some(_)) => false,
            // No record: the coordinator deletes it only after every partition resolved, and
            // the janitor only long after; an intent without one never committed.
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(txn = %id, error = %e, "cannot read a stale transaction's record");
                continue;
            }
        };
        tracing::info!(
            partition = db.partition(),
            txn = %id,
            commit,
            "resolving a transaction whose coordinator went silent"
        );
        match db.txn_resolve(&id, commit).await {
            Ok(_) => {}
            Err(e) => tracing::warn!(txn = %id, error = %e, "resolving a stale transaction failed"),
        }
    }
}

/// A pending record this old belongs to a coordinator that died before deciding (live ones
/// decide within `PREPARE_BUDGET`): the janitor aborts it.
const JANITOR_ABORT_PENDING_MS: u64 = 10 * 60 * 1000;
/// A decided record this old is deleted by the janitor. Owners resolve intents within seconds
/// of their coordinator going silent, so a record is only needed this long if a partition
/// stayed unavailable for a day (an intent that outlives its record is aborted).
const JANITOR_DELETE_DECIDED_MS: u64 = 24 * 3600 * 1000;

/// Cleans up transaction records left by coordinators that died: aborts old pending ones,
/// deletes long-decided ones. Returns (aborted, deleted).
pub(crate) async fn txn_janitor(
    etcd: &strata_manifest::etcd::Etcd,
    clock: &strata_clock::Clock,
) -> (usize, usize) {
    let Ok(records) = etcd.txn_list().await else {
        return (0, 0);
    };
    let now = clock.unix_ms();
    let (mut aborted, mut deleted) = (0, 0);
    for (id, rec) in records {
        let age = now.saturating_sub(rec.created_ms);
        let pending = rec.state == TxnState::Pending;
        if pending && age >= JANITOR_ABORT_PENDING_MS {
            if etcd.txn_decide(&id, TxnState::Aborted).await.is_ok() {
                aborted += 1;
            }
        } else if !pending && age >= JANITOR_DELETE_DECIDED_MS && etcd.txn_delete(&id).await.is_ok()
        {
            deleted += 1;
        }
    }
    if aborted + deleted > 0 {
        tracing::info!(aborted, deleted, "transaction records cleaned up");
    }
    (aborted, deleted)
}
