//! The key lifecycle. State only moves forward: Enabled ⇄ Disabled → PendingDeletion → Destroyed,
//! with PendingDeletion → Disabled when a deletion is cancelled. Destroyed is final.
//! [`Transition`] is the one definition of these moves.

use std::fmt;

use crate::Error;

/// Shortest and longest deletion windows, in days.
pub const DELETION_WINDOW_DAYS: std::ops::RangeInclusive<u32> = 7..=30;

/// A key's state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KeyState {
    /// Usable for every operation.
    Enabled,
    /// Usable for nothing until enabled again.
    Disabled,
    /// Usable for nothing; destroyed when the window ends unless cancelled.
    PendingDeletion,
    /// Material erased. Final.
    Destroyed,
}

impl KeyState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
            Self::PendingDeletion => "pending_deletion",
            Self::Destroyed => "destroyed",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "enabled" => Self::Enabled,
            "disabled" => Self::Disabled,
            "pending_deletion" => Self::PendingDeletion,
            "destroyed" => Self::Destroyed,
            _ => return None,
        })
    }
}

/// A lifecycle operation: from which states it starts, and where it leads. The one definition
/// that the admin plane and the destroyer both use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transition {
    /// Disabled → Enabled.
    Enable,
    /// Enabled → Disabled.
    Disable,
    /// Disabled → PendingDeletion: a key is disabled first, so its users fail visibly before
    /// its material is scheduled for destruction.
    ScheduleDeletion,
    /// PendingDeletion → Disabled.
    CancelDeletion,
    /// PendingDeletion → Destroyed, when the window has ended. Irreversible.
    Destroy,
}

impl Transition {
    /// The states the operation may start from.
    pub fn from(self) -> &'static [KeyState] {
        match self {
            Self::Enable => &[KeyState::Disabled],
            Self::Disable => &[KeyState::Enabled],
            Self::ScheduleDeletion => &[KeyState::Disabled],
            Self::CancelDeletion | Self::Destroy => &[KeyState::PendingDeletion],
        }
    }

    /// The state it leads to.
    pub fn to(self) -> KeyState {
        match self {
            Self::Enable => KeyState::Enabled,
            Self::Disable | Self::CancelDeletion => KeyState::Disabled,
            Self::ScheduleDeletion => KeyState::PendingDeletion,
            Self::Destroy => KeyState::Destroyed,
        }
    }

    /// Checks that the operation may start from `state`.
    pub fn check(self, state: KeyState) -> Result<(), Error> {
        if self.from().contains(&state) {
            Ok(())
        } else {
            Err(Error::InvalidTransition {
                from: state,
                to: self.to(),
            })
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::KeyState::*;
    use super::*;

    #[test]
    fn only_forward_moves() {
        let all = [Enabled, Disabled, PendingDeletion, Destroyed];
        let allowed = |t: Transition| all.iter().copied().filter(|s| t.check(*s).is_ok()).collect::<Vec<_>>();
        assert_eq!(allowed(Transition::Enable), [Disabled]);
        assert_eq!(allowed(Transition::Disable), [Enabled]);
        assert_eq!(allowed(Transition::ScheduleDeletion), [Disabled]);
        assert_eq!(allowed(Transition::CancelDeletion), [PendingDeletion]);
        assert_eq!(allowed(Transition::Destroy), [PendingDeletion]);
        // Nothing leaves Destroyed.
        for t in [
            Transition::Enable,
            Transition::Disable,
            Transition::ScheduleDeletion,
            Transition::CancelDeletion,
            Transition::Destroy,
        ] {
            assert!(t.check(Destroyed).is_err());
        }
        for s in all {
            assert_eq!(KeyState::parse(s.as_str()), Some(s));
        }
    }
}
