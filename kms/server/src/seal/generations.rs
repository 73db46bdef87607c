//! Root key generations: the first one made at init, a replica adopting what another one
//! initialized or rotated, the next generation held beside the current one during a rotation,
//! and its promotion when the rotation completes.

use super::*;

impl Seal {
    /// Replaces the state with generation `number` of the database: unsealed from the HSM
    /// (pkcs11; sealed if the HSM cannot be used) or sealed (shamir), shares collected so far
    /// dropped.
    pub(super) async fn take_generation(&self, store: &Store, number: u64) -> Result<(), ApiError> {
        // What this replaces: only if no one changed the state meanwhile (e.g. the background
        // tick installing a next root, or custodians completing an unseal).
        let before = self.state_key();
        let row = store
            .root_generation_unverified(number)
            .await?
            .ok_or_else(|| ApiError::new(Reason::CorruptRootGeneration, format!("generation {number} is missing")))?;
        let g = generation_of(&row).map_err(|e| ApiError::new(Reason::CorruptRootGeneration, e.to_string()))?;
        let sealed = || State::Sealed {
            generation: g,
            shares: BTreeMap::new(),
        };
        let state = match g.kind {
            SealKind::Pkcs11 => match self.hsm_held(&row) {
                // A rotation in progress: its next root is held before anything is served.
                Ok(held) => match self.open(store, g, held).await {
                    Ok(state) => state,
                    Err(e) => {
                        tracing::warn!(reason = %e.reason, message = %e.message, "cannot open the database under the current pkcs11 root; staying sealed");
                        sealed()
                    }
                },
                Err(e) => {
                    if e.reason == Reason::HsmLoginRefused {
                        tracing::error!(message = %e.message, "pkcs11 seal: the HSM refused the login; sealed until kmsd is restarted with the right PIN");
                    } else {
                        tracing::debug!(reason = %e.reason, message = %e.message, "cannot open the current pkcs11 root; sealed");
                        // A dead login (HSM restarted) is reopened at the next try.
                        self.drop_hsm();
                    }
                    sealed()
                }
            },
            _ => sealed(),
        };
        let mut st = self.write();
        if state_key_of(&st) == before {
            self.replace(&mut st, state);
        } else {
            self.republish(&st);
        }
        Ok(())
    }

    /// A sealed process follows the database's current generation (rotated by another
    /// replica): its shares of the old generation would no longer match anything stored.
    /// A sealed pkcs11 process retries the HSM.
    pub async fn refresh_sealed(&self, store: &Store) -> Result<(), ApiError> {
        let (held, kind) = match &*self.read() {
            State::Sealed { generation, .. } => (generation.number, generation.kind),
            _ => return Ok(()),
        };
        if let Some(cfg) = store.seal_config_unverified().await? {
            if cfg.root_generation != held || kind == SealKind::Pkcs11 {
                self.take_generation(store, cfg.root_generation).await?;
            }
        }
        Ok(())
    }

    /// Creates a fresh root key for a generation. Software seals return the material (to split
    /// into shares or write to the dev file) with its KCV; the pkcs11 seal generates the key in
    /// the HSM and returns no material, with the canary as check value.
    pub fn create_root(&self, kind: SealKind, generation: u64) -> Result<NewRoot, ApiError> {
        match kind {
            SealKind::Dev if self.dev_dir.is_none() => Err(ApiError::new(
                Reason::DevSealRefused,
                "the dev seal exists only in dev mode (kmsd --dev)",
            )),
            SealKind::Dev | SealKind::Shamir => {
                let material = RootKeyMaterial::generate()?;
                let root: Arc<dyn RootOfTrust> = Arc::new(GenerationRoot {
                    root: SoftwareRoot::new(&material)?,
                    generation,
                });
                let (integrity, integrity_key) = new_integrity(root.as_ref(), generation)?;
                Ok(NewRoot {
                    check: key_check_value(&material).to_vec(),
                    hsm_label: None,
                    material: Some(material),
                    integrity_key,
                    held: Held {
                        number: generation,
                        kind,
                        root,
                        integrity,
                    },
                })
            }
            SealKind::Pkcs11 => {
                let hsm = self.hsm()?;
                let label = format!("kms-root-g{generation}-{}", hex::encode(kms_core::random_array::<6>()?));
                let hsm_err = |e: kms_hsm::HsmError| ApiError::new(Reason::HsmUnavailable, e.to_string());
                let root = hsm.generate_root_key(&label).map_err(hsm_err)?;
                let signer = hsm.generate_signing_key(&format!("{label}-audit")).map_err(hsm_err)?;
                let held = Pkcs11Root {
                    root,
                    signer: Arc::new(HsmCheckpointSigner(signer)),
                    generation,
                    hsm: hsm.clone(),
                };
                let canary = held.wrap(
                    KeyId::from_bytes(wrap_ids::PKCS11_CANARY),
                    version_of(generation)?,
                    &Kek::generate()?,
                )?;
                let (integrity, integrity_key) = new_integrity(&held, generation)?;
                Ok(NewRoot {
                    check: canary,
                    hsm_label: Some(label),
                    material: None,
                    integrity_key,
                    held: Held {
                        number: generation,
                        kind,
                        root: Arc::new(held),
                        integrity,
                    },
                })
            }
        }
    }

    /// After init is stored: this process holds the root key it created.
    pub fn finish_init(&self, kind: SealKind, threshold: u32, root: NewRoot) -> Result<(), ApiError> {
        let kcv = check_value(kind, &root.check)
            .ok_or_else(|| ApiError::new(Reason::Internal, "check value of the wrong length"))?;
        let state = State::Unsealed {
            generation: Generation {
                number: 1,
                kind,
                threshold,
                kcv,
            },
            roots: Arc::new(Roots {
                current: root.held,
                next: None,
            }),
        };
        self.replace(&mut self.write(), state);
        Ok(())
    }

    /// Another replica initialized the database: load its seal record (sealed, or unsealed by
    /// the HSM).
    pub async fn adopt_initialized(&self, store: &Store, cfg: &SealConfigRow) {
        if !matches!(&*self.read(), State::Uninitialized) {
            return;
        }
        let Ok(Some(row)) = store.root_generation_unverified(cfg.root_generation).await else {
            return;
        };
        let Ok(generation) = generation_of(&row) else { return };
        let state = match generation.kind {
            SealKind::Pkcs11 => {
                let opened = match self.hsm_held(&row) {
                    Ok(held) => self.open(store, generation, held).await,
                    Err(e) => Err(e),
                };
                match opened {
                    Ok(state) => state,
                    Err(e) => {
                        tracing::warn!(reason = %e.reason, message = %e.message, "cannot open the pkcs11 root of the database initialized by another replica");
                        return;
                    }
                }
            }
            _ => State::Sealed {
                generation,
                shares: BTreeMap::new(),
            },
        };
        let mut st = self.write();
        if matches!(&*st, State::Uninitialized) {
            self.replace(&mut st, state);
        }
    }

    /// Picks up the database's rotation state: a pending next generation is opened (a software
    /// one by unwrapping it with the current root; a pkcs11 one from the HSM) so new secrets are
    /// wrapped under it and secrets already re-wrapped open; a completed rotation (done by
    /// another replica) makes the next generation current. Does nothing while sealed.
    pub async fn adopt_rotation(&self, store: &Store) -> Result<(), ApiError> {
        let (generation, roots) = match &*self.read() {
            State::Unsealed { generation, roots } => (*generation, roots.clone()),
            _ => return Ok(()),
        };
        // As stored: a generation this process does not hold authenticates it after a rotation
        // it missed (the rows it acts on are verified once it holds that generation).
        let Some(cfg) = store.seal_config_unverified().await? else {
            return Ok(());
        };
        if cfg.root_generation > generation.number {
            // Completed elsewhere: the pending generation we hold became current.
            if let Some(next) = &roots.next {
                if next.number == cfg.root_generation {
                    if let Some(row) = store.root_generation(next.number).await? {
                        let g = generation_of(&row)
                            .map_err(|e| ApiError::new(Reason::CorruptRootGeneration, e.to_string()))?;
                        self.promote(g);
                        return Ok(());
                    }
                }
            }
            // We never held it: this process must not go on with a retired root. It takes the
            // current generation instead: from the HSM (pkcs11), or sealed, for custodians to
            // unseal with their shares of that generation.
            tracing::warn!(
                held = generation.number,
                current = cfg.root_generation,
                "the root key was rotated past the generation this process holds: switching to the current one"
            );
            self.take_generation(store, cfg.root_generation).await?;
            return Ok(());
        }
        if roots.next.is_some() {
            return Ok(());
        }
        let Some(row) = store.pending_root_generation().await? else {
            return Ok(());
        };
        let held = self.open_pending(&row, &roots.current)?;
        self.install_held(row.generation, held);
        Ok(())
    }

    /// Wraps a software next root under the current root (for the rotation record).
    pub fn wrap_next_root(&self, next_generation: u64, material: &RootKeyMaterial) -> Result<Vec<u8>, ApiError> {
        let roots = self.roots()?;
        Ok(roots.current.root.wrap(
            KeyId::from_bytes(wrap_ids::NEXT_ROOT),
            version_of(next_generation)?,
            material,
        )?)
    }

    /// Holds a next generation's root once its rotation record is stored.
    pub fn install_next(&self, number: u64, root: NewRoot) {
        self.install_held(number, root.held);
    }

    pub(super) fn install_held(&self, number: u64, held_root: Held) {
        let mut st = self.write();
        if let State::Unsealed { generation, roots } = &*st {
            if roots.next.is_none() && number == generation.number + 1 {
                let new = Roots {
                    current: roots.current.clone(),
                    next: Some(held_root),
                };
                let generation = *generation;
                self.replace(
                    &mut st,
                    State::Unsealed {
                        generation,
                        roots: Arc::new(new),
                    },
                );
            }
        }
    }

    /// The rotation completed: the next generation becomes current.
    pub(super) fn promote(&self, g: Generation) {
        let mut st = self.write();
        if let State::Unsealed { roots, .. } = &*st {
            if let Some(next) = &roots.next {
                if next.number == g.number {
                    let current = next.clone();
                    self.replace(
                        &mut st,
                        State::Unsealed {
                            generation: g,
                            roots: Arc::new(Roots { current, next: None }),
                        },
                    );
                }
            }
        }
    }

    /// After the rotation's completing transaction: promote the next generation.
    pub async fn complete_rotation(&self, store: &Store) -> Result<(), ApiError> {
        self.adopt_rotation(store).await
    }

    /// Opens a pending generation's root: from the HSM (pkcs11) or by unwrapping it with the
    /// current root (software).
    pub(super) fn open_pending(&self, row: &RootGenerationRow, current: &Held) -> Result<Held, ApiError> {
        let g = generation_of(row).map_err(|e| ApiError::new(Reason::CorruptRootGeneration, e.to_string()))?;
        match g.kind {
            SealKind::Pkcs11 => self.hsm_held(row),
            kind => {
                let wrapped = row.next_root_wrapped.as_deref().ok_or_else(|| {
                    ApiError::new(
                        Reason::CorruptRootGeneration,
                        "pending software generation without its wrapped root",
                    )
                })?;
                let material = current
                    .root
                    .unwrap(KeyId::from_bytes(wrap_ids::NEXT_ROOT), version_of(g.number)?, wrapped)
                    .map_err(|_| ApiError::new(Reason::CorruptRootGeneration, "the next root does not unwrap"))?;
                software_held(row, kind, &material)
            }
        }
    }
}

/// A root a generation will have: the material for software seals (to split or write), its
/// check value (KCV, or the pkcs11 canary) and the held root.
pub struct NewRoot {
    /// Stored check value.
    pub check: Vec<u8>,
    /// The HSM key label (pkcs11).
    pub hsm_label: Option<String>,
    /// Software seals' material.
    pub material: Option<RootKeyMaterial>,
    /// The generation's integrity key, wrapped under the new root (stored in its generation
    /// row).
    pub integrity_key: Vec<u8>,
    held: Held,
}

impl NewRoot {
    /// The new generation's integrity key, as a ring (what Init authenticates its rows with).
    pub fn key_ring(&self) -> Option<KeyRing> {
        KeyRing::new(vec![(self.held.number, self.held.integrity.clone())])
    }
}

/// A software root of the generation `row` describes, with its integrity key.
pub(super) fn software_held(
    row: &RootGenerationRow,
    kind: SealKind,
    material: &RootKeyMaterial,
) -> Result<Held, ApiError> {
    let root: Arc<dyn RootOfTrust> = Arc::new(GenerationRoot {
        root: SoftwareRoot::new(material)?,
        generation: row.generation,
    });
    let integrity = open_integrity(root.as_ref(), row.generation, row.integrity_key.as_deref())?;
    Ok(Held {
        number: row.generation,
        kind,
        root,
        integrity,
    })
}

/// A fresh integrity key for `generation`, and it wrapped under that generation's root.
pub(super) fn new_integrity(root: &dyn RootOfTrust, generation: u64) -> Result<(Arc<IntegrityKey>, Vec<u8>), ApiError> {
    let secret = SecretKey::<32>::generate()?;
    let wrapped = root.wrap(
        KeyId::from_bytes(wrap_ids::INTEGRITY_KEY),
        version_of(generation)?,
        &secret,
    )?;
    Ok((Arc::new(IntegrityKey::new(&secret)), wrapped))
}

/// Unwraps a generation's integrity key with its root. A generation row without one (written
/// before row authentication existed) cannot be used: the database must be initialized again.
pub(super) fn open_integrity(
    root: &dyn RootOfTrust,
    generation: u64,
    wrapped: Option<&[u8]>,
) -> Result<Arc<IntegrityKey>, ApiError> {
    let wrapped = wrapped.ok_or_else(|| {
        ApiError::new(
            Reason::RowIntegrity,
            format!("root generation {generation} has no integrity key (a database from before row authentication): initialize a new database"),
        )
    })?;
    let secret = root
        .unwrap(KeyId::from_bytes(wrap_ids::INTEGRITY_KEY), version_of(generation)?, wrapped)
        .map_err(|_| {
            ApiError::new(
                Reason::RowIntegrity,
                format!("the integrity key of root generation {generation} does not unwrap under its root key (the generation row was altered)"),
            )
        })?;
    Ok(Arc::new(IntegrityKey::new(&secret)))
}

pub(super) fn generation_of(row: &RootGenerationRow) -> Result<Generation, LoadError> {
    let kind = SealKind::parse(&row.kind)
        .ok_or_else(|| LoadError::Refused(format!("unknown seal kind {:?} in the database", row.kind)))?;
    let kcv = check_value(kind, &row.kcv)
        .ok_or_else(|| LoadError::Refused("corrupt key check value in the database".into()))?;
    Ok(Generation {
        number: row.generation,
        kind,
        threshold: row.threshold,
        kcv,
    })
}

/// The 16-byte check value shown for a stored one: software roots store their KCV; the pkcs11
/// seal stores a canary whose SHA-256 prefix is shown.
pub(super) fn check_value(kind: SealKind, stored: &[u8]) -> Option<[u8; 16]> {
    match kind {
        SealKind::Pkcs11 => {
            let d = ring::digest::digest(&ring::digest::SHA256, stored);
            d.as_ref()[..16].try_into().ok()
        }
        _ => stored.try_into().ok(),
    }
}

pub(super) fn version_of(generation: u64) -> Result<KeyVersion, ApiError> {
    u32::try_from(generation)
        .ok()
        .and_then(KeyVersion::new)
        .ok_or_else(|| ApiError::new(Reason::CorruptRootGeneration, "generation out of range"))
}
