//! Root key generations and their rotation: the pending generation, the batches that re-wrap
//! every root-wrapped secret (KEK versions, token signing seeds, checkpoint signing secrets) from
//! generation g to g+1, the batches that re-authenticate every row under g+1's integrity key,
//! and the transaction that completes it. A re-wrap batch is one write transaction (the secrets
//! change, so the state log records them); a re-authentication batch changes no content or
//! version, only the authenticator, each row by a conditional UPDATE on its old authenticator.
//! Both leave every row under exactly one generation when interrupted, and resume.

use kms_core::audit::Record;
use kms_core::ids::AdminId;
use kms_core::integrity::Value;
use sqlx::Row as _;

use super::integrity::reauthenticate;
use super::row::{self, Row, Table};
use super::tables::*;
use super::{g, seal_stored, QuorumClose, Refusal, Store, StoreError, Tx};

/// The tables holding secrets wrapped under the root key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SecretTable {
    /// `key_versions.wrapped_kek` (id = key id, number = version).
    KeyVersions,
    /// `token_keys.wrapped_seed` (number = version).
    TokenKeys,
    /// `checkpoint_keys.wrapped_secret` (id = kid).
    CheckpointKeys,
}

/// A secret to re-wrap.
#[derive(Clone, Debug)]
pub struct RewrapItem {
    /// Where it is.
    pub table: SecretTable,
    /// Key id or kid.
    pub id: String,
    /// Version (0 where the table has none).
    pub number: i64,
    /// The wrapped secret; `None` where there is none (a destroyed version, an HSM-held key):
    /// then only its generation moves.
    pub wrapped: Option<Vec<u8>>,
}

/// `rotation_in_progress` while a generation is pending (its custodians and root are fixed).
/// The pending generation is always the one after `current` ([`Store::start_rotation`]): it is
/// read by primary key, so a row the database hides from the read is `row_rollback`, not "no
/// rotation".
pub(super) async fn refuse_if_rotating(tx: &mut Tx, current: u64) -> Result<(), StoreError> {
    let next = tx
        .get::<RootGenerationRow>(&[Value::int(g(current.saturating_add(1)))])
        .await?;
    if next.is_some_and(|r| r.status == "pending") {
        return Err(Refusal::RotationInProgress.into());
    }
    Ok(())
}

impl Store {
    /// One generation, verified.
    pub async fn root_generation(&self, generation: u64) -> Result<Option<RootGenerationRow>, StoreError> {
        Ok(self
            .get::<RootGenerationRow>(&[Value::int(g(generation))])
            .await?
            .map(|s| s.row))
    }

    /// One generation as stored, not verified: what the seal reads to open a root (the root's
    /// own check value or canary, and its wrapped integrity key, authenticate what matters; the
    /// row is verified once its integrity key is held).
    pub async fn root_generation_unverified(&self, generation: u64) -> Result<Option<RootGenerationRow>, StoreError> {
        Ok(self
            .unverified::<RootGenerationRow>("WHERE generation = $1", &[Value::int(g(generation))])
            .await?
            .into_iter()
            .next())
    }

    /// The generation being rotated to, if a rotation is in progress, verified.
    pub async fn pending_root_generation(&self) -> Result<Option<RootGenerationRow>, StoreError> {
        Ok(self
            .all::<RootGenerationRow>("WHERE status = 'pending' ORDER BY generation", &[], |r| {
                r.status == "pending"
            })
            .await?
            .into_iter()
            .next()
            .map(|s| s.row))
    }

    /// The pending generation as stored, not verified (see
    /// [`Store::root_generation_unverified`]).
    pub async fn pending_root_generation_unverified(&self) -> Result<Option<RootGenerationRow>, StoreError> {
        Ok(self
            .unverified::<RootGenerationRow>("WHERE status = 'pending' ORDER BY generation", &[])
            .await?
            .into_iter()
            .next())
    }

    /// When the rotation to `generation` started.
    pub async fn rotation_started_unix_ms(&self, generation: u64) -> Result<Option<i64>, StoreError> {
        Ok(self.root_generation(generation).await?.map(|r| r.created_unix_ms))
    }

    /// Starts a rotation to `next` (status pending) with the new custodians' shares. Refused if
    /// the current generation is not `next.generation - 1` or a rotation is in progress.
    pub async fn start_rotation(
        &self,
        next: &RootGenerationRow,
        shares: &[ShareRow],
        close: Option<&QuorumClose>,
        record: Record,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write(close).await?;
        let seal = seal_stored(&mut tx).await?;
        if seal.root_generation + 1 != next.generation {
            return Err(Refusal::RotationRaced.into());
        }
        refuse_if_rotating(&mut tx, seal.root_generation).await?;
        tx.insert(next).await?;
        for s in shares {
            tx.insert(s).await?;
        }
        tx.audit(vec![record]).await?;
        tx.commit().await
    }

    /// Up to `limit` secrets still under generation `old` (rows that verify): KEK versions
    /// first, then token and checkpoint keys.
    pub async fn rewrap_batch(&self, old: u64, limit: u32) -> Result<Vec<RewrapItem>, StoreError> {
        let under = [Value::int(g(old)), Value::int(limit)];
        let rest = "WHERE root_generation = $1 ORDER BY key_id, version LIMIT $2";
        let out: Vec<RewrapItem> = self
            .all::<KeyVersionRow>(rest, &under, |v| v.root_generation == old)
            .await?
            .into_iter()
            .map(|r| RewrapItem {
                table: SecretTable::KeyVersions,
                id: r.row.key_id.to_string(),
                number: i64::from(r.row.version.get()),
                wrapped: r.row.wrapped_kek,
            })
            .collect();
        if !out.is_empty() {
            return Ok(out);
        }
        let out: Vec<RewrapItem> = self
            .all::<TokenKeyRow>("WHERE root_generation = $1 ORDER BY version LIMIT $2", &under, |k| {
                k.root_generation == old
            })
            .await?
            .into_iter()
            .map(|r| RewrapItem {
                table: SecretTable::TokenKeys,
                id: String::new(),
                number: i64::from(r.row.version),
                wrapped: Some(r.row.wrapped_seed),
            })
            .collect();
        if !out.is_empty() {
            return Ok(out);
        }
        Ok(self
            .all::<CheckpointKeyRow>("WHERE root_generation = $1 ORDER BY kid LIMIT $2", &under, |k| {
                k.root_generation == g(old)
            })
            .await?
            .into_iter()
            .map(|r| RewrapItem {
                table: SecretTable::CheckpointKeys,
                id: r.row.kid,
                number: 0,
                wrapped: r.row.wrapped_secret,
            })
            .collect())
    }

    /// Stores one batch of re-wrapped secrets (each `(item, new wrapped)`) under `new`, in one
    /// write transaction; rows no longer under `old` are left alone. Returns the rows moved.
    pub async fn apply_rewrap(
        &self,
        old: u64,
        new: u64,
        batch: &[(RewrapItem, Option<Vec<u8>>)],
    ) -> Result<u64, StoreError> {
        let mut tx = Tx::begin(self).await?;
        let mut moved = 0;
        for (item, wrapped) in batch {
            let done = match item.table {
                SecretTable::KeyVersions => {
                    let version = u32::try_from(item.number).map_err(|_| Refusal::Internal("version out of range"))?;
                    match tx
                        .get::<KeyVersionRow>(&[Value::text(&item.id), Value::int(version)])
                        .await?
                    {
                        Some(r) if r.root_generation == old => {
                            let mut n = r.row.clone();
                            n.root_generation = new;
                            if n.wrapped_kek.is_some() {
                                n.wrapped_kek = wrapped.clone();
                            }
                            tx.update(&r, &n).await?;
                            true
                        }
                        _ => false,
                    }
                }
                SecretTable::TokenKeys => {
                    let version = u32::try_from(item.number).map_err(|_| Refusal::Internal("version out of range"))?;
                    match tx.get::<TokenKeyRow>(&[Value::int(version)]).await? {
                        Some(r) if r.root_generation == old => {
                            let mut n = r.row.clone();
                            n.root_generation = new;
                            if let Some(w) = wrapped {
                                n.wrapped_seed = w.clone();
                            }
                            tx.update(&r, &n).await?;
                            true
                        }
                        _ => false,
                    }
                }
                SecretTable::CheckpointKeys => match tx.get::<CheckpointKeyRow>(&[Value::text(&item.id)]).await? {
                    Some(r) if r.root_generation == g(old) => {
                        let mut n = r.row.clone();
                        n.root_generation = g(new);
                        if n.wrapped_secret.is_some() {
                            n.wrapped_secret = wrapped.clone();
                        }
                        tx.update(&r, &n).await?;
                        true
                    }
                    _ => false,
                },
            };
            moved += u64::from(done);
        }
        tx.commit().await?;
        Ok(moved)
    }

    /// Re-authenticates every row still authenticated under a generation older than `newest`
    /// (the newest key held): every table, then the state row. Pages of `page` rows by primary
    /// key, each page one transaction of conditional UPDATEs on the old authenticator, with
    /// `pause` between pages; rows that do not verify are reported and left (they stay refused).
    /// Content and versions do not change. Returns how many rows moved. Resumable: a row moved
    /// is never selected again.
    pub async fn reauthenticate_all(
        &self,
        newest: u64,
        page: u32,
        pause: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let mut moved = 0u64;
        moved += self.reauthenticate_table::<SealConfigRow>(newest, page, pause).await?;
        moved += self
            .reauthenticate_table::<RootGenerationRow>(newest, page, pause)
            .await?;
        moved += self.reauthenticate_table::<ShareRow>(newest, page, pause).await?;
        moved += self.reauthenticate_table::<AdminRow>(newest, page, pause).await?;
        moved += self.reauthenticate_table::<KeyRow>(newest, page, pause).await?;
        moved += self.reauthenticate_table::<KeyVersionRow>(newest, page, pause).await?;
        moved += self
            .reauthenticate_table::<ReleasePolicyRow>(newest, page, pause)
            .await?;
        moved += self.reauthenticate_table::<HardwareRow>(newest, page, pause).await?;
        moved += self
            .reauthenticate_table::<TpmEnrollmentRow>(newest, page, pause)
            .await?;
        moved += self.reauthenticate_table::<ProposalRow>(newest, page, pause).await?;
        moved += self.reauthenticate_table::<ApprovalRow>(newest, page, pause).await?;
        moved += self.reauthenticate_table::<RejectionRow>(newest, page, pause).await?;
        moved += self.reauthenticate_table::<TokenKeyRow>(newest, page, pause).await?;
        moved += self
            .reauthenticate_table::<CheckpointKeyRow>(newest, page, pause)
            .await?;
        moved += self
            .reauthenticate_table::<AdminRequestRow>(newest, page, pause)
            .await?;
        moved += self.reauthenticate_table::<ReplicaRow>(newest, page, pause).await?;
        moved += self.reauthenticate_table::<TpmClockRow>(newest, page, pause).await?;
        moved += u64::from(self.integrity.reauthenticate_state(self).await?);
        Ok(moved)
    }

    async fn reauthenticate_table<T: Row>(
        &self,
        newest: u64,
        page: u32,
        pause: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let ring = self.integrity.ring_for_rotation()?;
        let order = key_order::<T>();
        let mut after: Option<Vec<Value>> = None;
        let mut moved = 0;
        loop {
            let mut binds = vec![Value::int(g(newest)), Value::int(page)];
            let rest = match &after {
                None => format!("WHERE row_generation < $1 ORDER BY {order} LIMIT $2"),
                Some(last) => {
                    let params: Vec<String> = (0..T::KEY).map(|i| format!("${}", i + 3)).collect();
                    binds.extend(last.iter().cloned());
                    format!(
                        "WHERE row_generation < $1 AND ({order}) > ({}) ORDER BY {order} LIMIT $2",
                        params.join(", ")
                    )
                }
            };
            let rows = self.fetch::<T>(&rest, &binds, |s| s.generation < newest).await?;
            let Some(last) = rows.last() else { break };
            after = Some(match last {
                Ok(s) => s.row.to_values()[..T::KEY].to_vec(),
                Err(StoreError::Integrity(v) | StoreError::Rollback(v)) => key_values::<T>(&v.key)?,
                Err(_) => break,
            });
            let verified: Vec<_> = rows.into_iter().filter_map(Result::ok).collect();
            let mut tx = self.pool.begin().await?;
            for r in &verified {
                if reauthenticate::<T>(&mut tx, &ring, r).await? {
                    moved += 1;
                }
            }
            tx.commit().await?;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        Ok(moved)
    }

    /// Records that replica `id` (unsealed) holds `generation` and, during a rotation, `next`.
    pub async fn heartbeat(&self, id: &str, generation: u64, next: Option<u64>, now: i64) -> Result<(), StoreError> {
        let row = ReplicaRow {
            id: id.to_owned(),
            generation,
            next_generation: next,
            seen_unix_ms: now,
        };
        let previous = match self.get::<ReplicaRow>(&[Value::text(id)]).await {
            Ok(p) => p,
            // A row of ours that does not verify (someone wrote it): replace it.
            Err(StoreError::Integrity(_)) => {
                sqlx::query("DELETE FROM replicas WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                None
            }
            Err(e) => return Err(e),
        };
        self.put_untracked(previous.as_ref(), &row).await
    }

    /// Forgets a replica (sealed or stopping); rows not refreshed for a while are ignored anyway.
    pub async fn forget_replica(&self, id: &str, before: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM replicas WHERE id = $1 OR seen_unix_ms < $2")
            .bind(id)
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Live replicas (seen since `since`, rows that verify) that hold `old` but not yet `new`.
    pub async fn replicas_behind(&self, old: u64, new: u64, since: i64) -> Result<Vec<String>, StoreError> {
        let mut ids: Vec<String> = self
            .all::<ReplicaRow>("WHERE seen_unix_ms > $1", &[Value::int(since)], |r| {
                r.seen_unix_ms > since
            })
            .await?
            .into_iter()
            .filter(|r| r.generation == old && r.next_generation != Some(new))
            .map(|r| r.row.id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// How many secrets are still wrapped under generation `old`, and how many rows are still
    /// authenticated under it (for progress reports; the worker decides by its batches).
    pub async fn remaining_under(&self, old: u64) -> Result<u64, StoreError> {
        let mut sql = String::from(
            "SELECT (SELECT COUNT(*) FROM key_versions WHERE root_generation = $1) \
             + (SELECT COUNT(*) FROM token_keys WHERE root_generation = $1) \
             + (SELECT COUNT(*) FROM checkpoint_keys WHERE root_generation = $1)",
        );
        for t in Table::ALL {
            sql.push_str(&format!(
                " + (SELECT COUNT(*) FROM {} WHERE row_generation = $1)",
                t.name()
            ));
        }
        sql.push_str(" AS n");
        let n: i64 = sqlx::query(&sql)
            .bind(g(old))
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Completes the rotation from `old` to `new` once no secret is left under `old` and no row
    /// is authenticated under it: `new` becomes the seal's current generation (kind, threshold, check value),
    /// `old` is retired and its shares deleted, custodian flags follow the new shares. `false` if
    /// there is nothing to complete (done by another replica, or secrets remain).
    pub async fn complete_rotation(&self, old: u64, new: u64, record: Record) -> Result<bool, StoreError> {
        let mut tx = Tx::begin(self).await?;
        let seal = seal_stored(&mut tx).await?;
        if seal.root_generation != old {
            return Ok(false);
        }
        let Some(next) = tx.get::<RootGenerationRow>(&[Value::int(g(new))]).await? else {
            return Ok(false);
        };
        if next.status != "pending" {
            return Ok(false);
        }
        let under = [Value::int(g(old))];
        // Every secret read, not those a `WHERE root_generation = old` returns: the database
        // can leave rows out of an answer (a view in the table's place), and one left out here
        // would keep its secret wrapped under a root retired for good. A row missing from the
        // whole table, or one that does not verify, fails the completion (the rotation stays
        // open); the worker tries again.
        if tx
            .every::<KeyVersionRow>()
            .await?
            .iter()
            .any(|v| v.root_generation == old)
            || tx
                .every::<TokenKeyRow>()
                .await?
                .iter()
                .any(|k| k.root_generation == old)
            || tx
                .every::<CheckpointKeyRow>()
                .await?
                .iter()
                .any(|k| k.root_generation == g(old))
        {
            return Ok(false);
        }
        // Nor a row still authenticated under `old` (written after the worker's pass over its
        // table, by a replica that held only `old`): once `old` is retired no replica holds its
        // integrity key, and the row would never verify again. The worker passes again.
        if tx.authenticated_before(new).await? {
            return Ok(false);
        }
        let now = record.time_unix_ms;
        let mut promoted = next.row.clone();
        promoted.status = "active".into();
        promoted.next_root_wrapped = None;
        promoted.completed_unix_ms = Some(now);
        tx.update(&next, &promoted).await?;
        if let Some(prev) = tx.get::<RootGenerationRow>(&[Value::int(g(old))]).await? {
            let mut retired = prev.row.clone();
            retired.status = "retired".into();
            retired.completed_unix_ms = Some(now);
            tx.update(&prev, &retired).await?;
        }
        let mut cfg = seal.row.clone();
        cfg.root_generation = new;
        cfg.kind = promoted.kind.clone();
        cfg.threshold = promoted.threshold;
        cfg.kcv = promoted.kcv.clone();
        tx.update(&seal, &cfg).await?;
        for s in tx
            .all::<ShareRow>("WHERE generation = $1", &under, |s| s.generation == old)
            .await?
        {
            tx.delete(&s).await?;
        }
        let custodians: Vec<AdminId> = tx
            .all::<ShareRow>("WHERE generation = $1", &[Value::int(g(new))], |s| s.generation == new)
            .await?
            .into_iter()
            .map(|s| s.row.admin_id)
            .collect();
        for a in tx.all::<AdminRow>("", &[], row::every).await? {
            let custodian = custodians.contains(&a.id);
            if a.custodian != custodian {
                let mut n = a.row.clone();
                n.custodian = custodian;
                tx.update(&a, &n).await?;
            }
        }
        tx.audit(vec![record]).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// A primary key's values back from its canonical text (for paging past a row that does not
/// verify).
fn key_values<T: Row>(key: &str) -> Result<Vec<Value>, StoreError> {
    let parts: Vec<String> =
        serde_json::from_str(key).map_err(|_| StoreError::Refused(Refusal::Internal("unreadable row key")))?;
    T::COLUMNS[..T::KEY]
        .iter()
        .zip(parts)
        .map(|(c, p)| match c.kind {
            row::Kind::Int => p
                .parse::<i64>()
                .map(Value::int)
                .map_err(|_| StoreError::Refused(Refusal::Internal("unreadable row key"))),
            row::Kind::Text => Ok(Value::text(p)),
            row::Kind::Bytes => hex::decode(p)
                .map(Value::bytes)
                .map_err(|_| StoreError::Refused(Refusal::Internal("unreadable row key"))),
        })
        .collect()
}

/// `ORDER BY` of a table's primary key.
fn key_order<T: Row>() -> String {
    T::COLUMNS[..T::KEY]
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}
