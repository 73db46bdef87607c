//! The shamir seal: the root key rebuilt in memory from M custodians' shares, each submitted
//! re-wrapped to this process's unseal key; the key check value decides whether the set is right.

use super::*;

impl Seal {
    /// Opens a custodian's share re-wrapped to this process's unseal key and adds it. The
    /// envelope must carry the share labelled for this admin. When the threshold is reached the
    /// root key is rebuilt and checked (a wrong set is discarded whole so the custodians can
    /// start again), and a rotation in progress is picked up before anything is served, so
    /// secrets already re-wrapped under the next generation open at once.
    pub async fn submit_share(&self, store: &Store, admin_id: &str, envelope: &[u8]) -> Result<Status, ApiError> {
        let Some((generation, root)) = self.add_share(admin_id, envelope)? else {
            return Ok(self.status());
        };
        // The shares rebuilt generation g; if the database moved on meanwhile, g is retired.
        if let Some(cfg) = store.seal_config_unverified().await? {
            if cfg.root_generation != generation.number {
                self.take_generation(store, cfg.root_generation).await?;
                return Err(ApiError::new(
                    Reason::GenerationChanged,
                    format!(
                        "the root key was rotated to generation {} meanwhile: unseal with your shares of that generation",
                        cfg.root_generation
                    ),
                ));
            }
        }
        let row = store
            .root_generation_unverified(generation.number)
            .await?
            .ok_or_else(|| ApiError::new(Reason::CorruptRootGeneration, "the current generation is missing"))?;
        let current = software_held(&row, SealKind::Shamir, &root)?;
        // The rows are checked before anything is served: a seal record, generation or share
        // that kmsd did not write refuses the unseal (the custodians start again once an
        // operator has looked).
        let unsealed = self.open(store, generation, current).await?;
        {
            let mut st = self.write();
            if let State::Sealed { generation: g, .. } = &*st {
                if g.number == generation.number {
                    self.replace(&mut st, unsealed);
                } else {
                    self.republish(&st);
                }
            } else {
                self.republish(&st);
            }
        }
        Ok(self.status())
    }

    /// Adds a share; with the threshold reached, takes the shares and returns the rebuilt root.
    pub(super) fn add_share(
        &self,
        admin_id: &str,
        envelope: &[u8],
    ) -> Result<Option<(Generation, RootKeyMaterial)>, ApiError> {
        let unreadable = || {
            ApiError::new(
                Reason::ShareUnreadable,
                "the share is not wrapped to this server's current unseal key for this admin (fetch the status again)",
            )
        };
        let envelope = ShareEnvelope::decode(envelope).map_err(|_| unreadable())?;
        let plaintext = self.unseal_key.open(&envelope).map_err(|_| unreadable())?;
        let share = share_wrap::parse_share_plaintext(admin_id, &plaintext).map_err(|_| {
            ApiError::new(
                Reason::ShareNotYours,
                format!("the submitted share is not the one sealed to admin {admin_id}"),
            )
        })?;
        {
            let mut st = self.write();
            match &mut *st {
                State::Uninitialized => {
                    return Err(ApiError::new(Reason::NotInitialized, "the server is not initialized"));
                }
                State::Unsealed { .. } => {
                    return Err(ApiError::new(Reason::AlreadyUnsealed, "the server is already unsealed"));
                }
                State::Sealed { generation, shares } => {
                    if generation.kind != SealKind::Shamir {
                        return Err(ApiError::new(Reason::NotShamir, "this seal takes no shares"));
                    }
                    if shares.contains_key(admin_id) {
                        return Err(ApiError::new(
                            Reason::ShareAlreadySubmitted,
                            format!("admin {admin_id} has already submitted a share in this unseal attempt"),
                        ));
                    }
                    shares.insert(admin_id.to_owned(), share);
                    if u32::try_from(shares.len()).unwrap_or(u32::MAX) >= generation.threshold {
                        let all: Vec<SecretBytes> = std::mem::take(shares).into_values().collect();
                        let t = u8::try_from(generation.threshold).unwrap_or(u8::MAX);
                        let root = kms_core::shamir::combine(t, &all, &generation.kcv).map_err(|e| match e {
                            kms_core::Error::KeyCheckMismatch => ApiError::new(
                                Reason::WrongShareSet,
                                "the submitted shares do not rebuild this server's root key; all shares were discarded, start again",
                            ),
                            other => ApiError::new(Reason::InvalidShare, format!("{other}; all shares were discarded, start again")),
                        })?;
                        return Ok(Some((*generation, root)));
                    }
                }
            }
        }
        Ok(None)
    }
}
