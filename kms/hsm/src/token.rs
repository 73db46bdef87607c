//! Opening a token: the per-process module registry, token selection, login, and the sessions
//! every key operation runs in.
//!
//! A PKCS#11 module may be `C_Initialize`d only once per process, and the login state belongs to
//! the application as a whole, not to a session: so modules are kept in a process-wide registry
//! by canonical path, and logins in a registry by (module, slot) shared by every [`Hsm`] on the
//! same token. A second [`Hsm::open`] of a logged-in token checks its PIN against the one the
//! process logged in with (an HMAC under a per-process random key; the PIN is not kept), because
//! the token itself would accept any PIN then (`CKR_USER_ALREADY_LOGGED_IN`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::RawAuthPin;
use ring::hmac;

use crate::error::describe;
use crate::{HsmError, Pin};

/// Which token of a module to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token with this label (labels should be unique per module).
    Label(String),
    /// The token in this slot id.
    Slot(u64),
    /// The token with this serial number.
    Serial(String),
}

impl FromStr for TokenSelector {
    type Err = HsmError;

    /// Parses `label:NAME`, `slot:N` or `serial:S`; any other string is a label.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || HsmError::InvalidSelector(s.to_owned());
        let selector = if let Some(label) = s.strip_prefix("label:") {
            Self::Label(label.to_owned())
        } else if let Some(slot) = s.strip_prefix("slot:") {
            Self::Slot(slot.parse().map_err(|_| bad())?)
        } else if let Some(serial) = s.strip_prefix("serial:") {
            Self::Serial(serial.to_owned())
        } else {
            Self::Label(s.to_owned())
        };
        match &selector {
            Self::Label(v) | Self::Serial(v) if v.is_empty() => Err(bad()),
            _ => Ok(selector),
        }
    }
}

impl fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Label(l) => write!(f, "token label '{l}'"),
            Self::Slot(s) => write!(f, "token in slot {s}"),
            Self::Serial(s) => write!(f, "token serial '{s}'"),
        }
    }
}

fn modules() -> &'static Mutex<HashMap<PathBuf, Pkcs11>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    MODULES.get_or_init(Default::default)
}

/// The module at `path`, loaded and initialised once per process.
fn load_module(path: &Path) -> Result<(PathBuf, Pkcs11), HsmError> {
    let fail = |reason: String| HsmError::Module {
        module: path.to_owned(),
        reason,
    };
    let canonical = path
        .canonicalize()
        .map_err(|e| fail(format!("cannot find the module file: {e}")))?;
    let mut registry = modules().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(ctx) = registry.get(&canonical) {
        return Ok((canonical, ctx.clone()));
    }
    let ctx = Pkcs11::new(&canonical).map_err(|e| fail(format!("cannot load: {}", describe(&e))))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Another library in this process initialised it: usable all the same.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(fail(format!("cannot initialise: {}", describe(&e)))),
    }
    registry.insert(canonical.clone(), ctx.clone());
    Ok((canonical, ctx))
}

/// Keeps a token logged in: the login lasts while any session of the process is open.
struct Login {
    _session: Mutex<Session>,
    pin_tag: hmac::Tag,
    /// Serialises changes to token objects in this process: SoftHSM2 2.6.1 fails concurrent
    /// token-object creation with `CKR_GENERAL_ERROR`. Key generation is rare; signing and
    /// decryption never take it.
    object_store: Mutex<()>,
}

type LoginKey = (PathBuf, u64);

fn logins() -> &'static Mutex<HashMap<LoginKey, Weak<Login>>> {
    static LOGINS: OnceLock<Mutex<HashMap<LoginKey, Weak<Login>>>> = OnceLock::new();
    LOGINS.get_or_init(Default::default)
}

fn pin_key() -> Result<&'static hmac::Key, HsmError> {
    static KEY: OnceLock<hmac::Key> = OnceLock::new();
    if let Some(k) = KEY.get() {
        return Ok(k);
    }
    let rng = ring::rand::SystemRandom::new();
    let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
        .map_err(|_| HsmError::PinSource("the system random number generator failed".into()))?;
    Ok(KEY.get_or_init(|| key))
}

/// How many idle sessions a token keeps for reuse.
const IDLE_SESSIONS: usize = 8;

/// What every handle on one opened token shares.
pub(crate) struct Token {
    ctx: Pkcs11,
    slot: Slot,
    module: PathBuf,
    label: String,
    // Dropped before `login`, so the token is logged out as soon as `login` goes.
    idle: Mutex<Vec<Session>>,
    login: Arc<Login>,
}

impl Token {
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// A `Pkcs11` error while doing `what`.
    pub(crate) fn err(&self, what: impl Into<String>, e: &CkError) -> HsmError {
        HsmError::Pkcs11 {
            token: self.label.clone(),
            what: what.into(),
            call: describe(e),
        }
    }

    fn open_session(&self) -> Result<Session, HsmError> {
        self.ctx
            .open_rw_session(self.slot)
            .map_err(|e| self.err("opening a session", &e))
    }

    /// Runs `f` in a session of this token (logged in). Sessions are reused, except after an error,
    /// when the session is closed in case the module left an operation active in it.
    pub(crate) fn with_session<T>(&self, f: impl FnOnce(&Session) -> Result<T, HsmError>) -> Result<T, HsmError> {
        let reused = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let session = match reused {
            Some(s) => s,
            None => self.open_session()?,
        };
        let out = f(&session);
        if out.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE_SESSIONS {
                idle.push(session);
            }
        }
        out
    }

    /// Runs `f` in a session while no other thread of the process changes this token's objects.
    pub(crate) fn with_object_store<T>(&self, f: impl FnOnce(&Session) -> Result<T, HsmError>) -> Result<T, HsmError> {
        let _guard = self.login.object_store.lock().unwrap_or_else(|p| p.into_inner());
        self.with_session(f)
    }

    /// Runs `f` in a session of its own, closed afterwards: every session object it makes is
    /// destroyed by the module when the session closes, whatever `f` did.
    pub(crate) fn with_fresh_session<T>(&self, f: impl FnOnce(&Session) -> Result<T, HsmError>) -> Result<T, HsmError> {
        let session = self.open_session()?;
        let out = f(&session);
        drop(session);
        out
    }

    /// The token objects labelled `label` that match `template` as well.
    pub(crate) fn find(
        &self,
        session: &Session,
        label: &str,
        template: &[Attribute],
    ) -> Result<Vec<ObjectHandle>, HsmError> {
        let mut t = vec![Attribute::Label(label.as_bytes().to_vec()), Attribute::Token(true)];
        t.extend_from_slice(template);
        session
            .find_objects(&t)
            .map_err(|e| self.err(format!("looking up '{label}'"), &e))
    }

    /// The one key of `kind` labelled `label` matching `template`.
    pub(crate) fn find_one(
        &self,
        session: &Session,
        kind: &'static str,
        label: &str,
        template: &[Attribute],
    ) -> Result<ObjectHandle, HsmError> {
        let found = self.find(session, label, template)?;
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(HsmError::KeyNotFound {
                token: self.label.clone(),
                kind,
                label: label.to_owned(),
            }),
            many => Err(HsmError::Ambiguous {
                token: self.label.clone(),
                kind,
                label: label.to_owned(),
                count: many.len(),
            }),
        }
    }

    /// Fails if any token object is labelled `label`.
    pub(crate) fn ensure_free(&self, session: &Session, label: &str) -> Result<(), HsmError> {
        if label.is_empty() {
            return Err(HsmError::KeyNotFound {
                token: self.label.clone(),
                kind: "key (empty labels are not allowed)",
                label: String::new(),
            });
        }
        if self.find(session, label, &[])?.is_empty() {
            Ok(())
        } else {
            Err(HsmError::KeyExists {
                token: self.label.clone(),
                label: label.to_owned(),
            })
        }
    }

    /// One attribute's value.
    pub(crate) fn attribute(
        &self,
        session: &Session,
        object: ObjectHandle,
        which: AttributeType,
    ) -> Result<Option<Attribute>, HsmError> {
        session
            .get_attributes(object, &[which])
            .map(|mut v| v.pop())
            .map_err(|e| self.err(format!("reading attribute {which}"), &e))
    }

    /// The SEC1 uncompressed point of an EC public key object.
    pub(crate) fn ec_point(&self, session: &Session, public: ObjectHandle) -> Result<Vec<u8>, HsmError> {
        let malformed = || HsmError::Malformed {
            token: self.label.clone(),
            what: "EC public key (CKA_EC_POINT is not an uncompressed P-256 point)",
        };
        match self.attribute(session, public, AttributeType::EcParams)? {
            Some(Attribute::EcParams(p)) if p == crate::der::P256_PARAMS => {}
            _ => {
                return Err(HsmError::Malformed {
                    token: self.label.clone(),
                    what: "EC public key (CKA_EC_PARAMS is not the P-256 curve)",
                })
            }
        }
        match self.attribute(session, public, AttributeType::EcPoint)? {
            Some(Attribute::EcPoint(v)) => crate::der::ec_point(&v).ok_or_else(malformed),
            _ => Err(malformed()),
        }
    }

    /// 16 random bytes for `CKA_ID`.
    pub(crate) fn new_id(&self) -> Result<Vec<u8>, HsmError> {
        Ok(kms_core::random_array::<16>()?.to_vec())
    }
}

/// What [`Hsm::key_info`] reports about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The object class (`CKO_PRIVATE_KEY`, `CKO_SECRET_KEY`, ...).
    pub class: String,
    /// `CKA_SENSITIVE`, if the object has it.
    pub sensitive: Option<bool>,
    /// `CKA_EXTRACTABLE`, if the object has it.
    pub extractable: Option<bool>,
    /// `CKA_NEVER_EXTRACTABLE`, if the object has it.
    pub never_extractable: Option<bool>,
    /// Whether `C_GetAttributeValue` would return `CKA_VALUE` (it must not, for private and
    /// secret keys).
    pub value_readable: bool,
}

/// An opened token with a logged-in user. `Send + Sync`: operations may run from several threads
/// at once, each in a session of its own. Key handles ([`crate::HsmSigner`] etc.) keep the token
/// open and logged in while they live.
pub struct Hsm {
    pub(crate) token: Arc<Token>,
}

impl fmt::Debug for Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hsm")
            .field("module", &self.token.module)
            .field("token", &self.token.label)
            .field("slot", &self.token.slot.id())
            .finish()
    }
}

fn token_summary(ctx: &Pkcs11, slot: Slot) -> String {
    match ctx.get_token_info(slot) {
        Ok(info) => format!(
            "'{}' (serial {}, slot {})",
            info.label().trim_end(),
            info.serial_number().trim_end(),
            slot.id()
        ),
        Err(e) => format!("slot {} (unreadable: {})", slot.id(), describe(&e)),
    }
}

impl Hsm {
    /// Loads `module` (once per process), finds the token, and logs the user in with `pin`.
    pub fn open(module: &Path, selector: &TokenSelector, pin: &Pin) -> Result<Self, HsmError> {
        let (canonical, ctx) = load_module(module)?;
        let module_err = |reason: String| HsmError::Module {
            module: module.to_owned(),
            reason,
        };
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| module_err(format!("cannot list slots: {}", describe(&e))))?;
        let mut chosen = None;
        for slot in &slots {
            let Ok(info) = ctx.get_token_info(*slot) else { continue };
            let hit = match selector {
                TokenSelector::Label(l) => info.label().trim_end() == l,
                TokenSelector::Slot(id) => slot.id() == *id,
                TokenSelector::Serial(s) => info.serial_number().trim_end() == s,
            };
            if hit && info.token_initialized() {
                chosen = Some((*slot, info.label().trim_end().to_owned()));
                break;
            }
        }
        let Some((slot, label)) = chosen else {
            let present: Vec<String> = slots
                .iter()
                .filter(|s| ctx.get_token_info(**s).map(|i| i.token_initialized()).unwrap_or(false))
                .map(|s| token_summary(&ctx, *s))
                .collect();
            return Err(HsmError::TokenNotFound {
                module: module.to_owned(),
                selector: selector.to_string(),
                present: if present.is_empty() {
                    "none".into()
                } else {
                    present.join(", ")
                },
            });
        };
        let login = login(&ctx, slot, &canonical, &label, pin)?;
        Ok(Self {
            token: Arc::new(Token {
                ctx,
                slot,
                module: canonical,
                label,
                idle: Mutex::new(Vec::new()),
                login,
            }),
        })
    }

    /// The token's label.
    pub fn token_label(&self) -> &str {
        &self.token.label
    }

    /// The slot id of the token.
    pub fn slot_id(&self) -> u64 {
        self.token.slot.id()
    }

    /// What the token says about each object labelled `label`: enough to show a key cannot be
    /// extracted (for audits and tests).
    pub fn key_info(&self, label: &str) -> Result<Vec<KeyInfo>, HsmError> {
        let t = &self.token;
        t.with_session(|s| {
            let mut out = Vec::new();
            for o in t.find(s, label, &[])? {
                let flag = |which| -> Result<Option<bool>, HsmError> {
                    Ok(match t.attribute(s, o, which)? {
                        Some(Attribute::Sensitive(b) | Attribute::Extractable(b) | Attribute::NeverExtractable(b)) => {
                            Some(b)
                        }
                        _ => None,
                    })
                };
                let class = match t.attribute(s, o, AttributeType::Class)? {
                    Some(Attribute::Class(c)) => c.to_string(),
                    _ => "unknown".into(),
                };
                let value = s
                    .get_attribute_info(o, &[AttributeType::Value])
                    .map_err(|e| t.err(format!("reading attribute information of '{label}'"), &e))?;
                out.push(KeyInfo {
                    class,
                    sensitive: flag(AttributeType::Sensitive)?,
                    extractable: flag(AttributeType::Extractable)?,
                    never_extractable: flag(AttributeType::NeverExtractable)?,
                    value_readable: matches!(value.first(), Some(AttributeInfo::Available(_))),
                });
            }
            Ok(out)
        })
    }

    /// Destroys every token object labelled `label` (for rotation and test clean-up); returns how
    /// many there were.
    pub fn delete_object(&self, label: &str) -> Result<usize, HsmError> {
        let t = &self.token;
        t.with_object_store(|s| {
            let found = t.find(s, label, &[])?;
            for o in &found {
                s.destroy_object(*o)
                    .map_err(|e| t.err(format!("destroying object '{label}'"), &e))?;
            }
            Ok(found.len())
        })
    }
}

fn login(ctx: &Pkcs11, slot: Slot, module: &Path, label: &str, pin: &Pin) -> Result<Arc<Login>, HsmError> {
    let key = pin_key()?;
    let mut registry = logins().lock().unwrap_or_else(|p| p.into_inner());
    registry.retain(|_, w| w.strong_count() > 0);
    let reg_key = (module.to_owned(), slot.id());
    if let Some(existing) = registry.get(&reg_key).and_then(Weak::upgrade) {
        return match hmac::verify(key, pin.expose_secret(), existing.pin_tag.as_ref()) {
            Ok(()) => Ok(existing),
            Err(_) => Err(HsmError::PinIncorrect {
                token: label.to_owned(),
                reason: "it differs from the PIN this process is logged in with",
            }),
        };
    }
    let session = ctx.open_rw_session(slot).map_err(|e| HsmError::Pkcs11 {
        token: label.to_owned(),
        what: "opening a session".into(),
        call: describe(&e),
    })?;
    user_login(&session, label, pin, true)?;
    let login = Arc::new(Login {
        _session: Mutex::new(session),
        pin_tag: hmac::sign(key, pin.expose_secret()),
        object_store: Mutex::new(()),
    });
    registry.insert(reg_key, Arc::downgrade(&login));
    Ok(login)
}

fn user_login(session: &Session, label: &str, pin: &Pin, may_retry: bool) -> Result<(), HsmError> {
    let raw = RawAuthPin::new(Box::new(pin.expose_secret().to_vec()));
    let login_err = |reason: String| HsmError::Login {
        token: label.to_owned(),
        reason,
    };
    match session.login_with_raw(UserType::User, &raw) {
        Ok(()) => Ok(()),
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(HsmError::PinIncorrect {
            token: label.to_owned(),
            reason: "CKR_PIN_INCORRECT",
        }),
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(login_err(
            "the user PIN is locked (CKR_PIN_LOCKED); the security officer must reset it".into(),
        )),
        Err(CkError::Pkcs11(RvError::UserPinNotInitialized, _)) => Err(login_err(
            "the user PIN is not initialised (CKR_USER_PIN_NOT_INITIALIZED); initialise it first".into(),
        )),
        // No live `Hsm` of this process holds the login, yet the token is logged in: a session
        // outlived it (one being closed right now, or one opened outside this crate). Log out and
        // in again, so that the token checks this PIN.
        Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) if may_retry => {
            let _ = session.logout();
            user_login(session, label, pin, false)
        }
        Err(e) => Err(login_err(describe(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_selectors() {
        assert_eq!(
            "label:a".parse::<TokenSelector>().unwrap(),
            TokenSelector::Label("a".into())
        );
        assert_eq!(
            "plain".parse::<TokenSelector>().unwrap(),
            TokenSelector::Label("plain".into())
        );
        assert_eq!("slot:7".parse::<TokenSelector>().unwrap(), TokenSelector::Slot(7));
        assert_eq!(
            "serial:ab12".parse::<TokenSelector>().unwrap(),
            TokenSelector::Serial("ab12".into())
        );
        assert!("slot:x".parse::<TokenSelector>().is_err());
        assert!("label:".parse::<TokenSelector>().is_err());
        assert!("".parse::<TokenSelector>().is_err());
    }

    #[test]
    fn hsm_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Hsm>();
        check::<crate::HsmSigner>();
        check::<crate::HsmShareKey>();
        check::<crate::HsmRoot>();
    }
}
