//! The key lifecycle. State only moves forward: Enabled ⇄ Disabled → PendingDeletion → Destroyed,
//! with PendingDeletion → Disabled when a deletion is cancelled. Destroyed is final.

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

    /// The states from which `to` may be reached.
    pub fn sources_of(to: Self) -> &'static [Self] {
        match to {
            Self::Enabled => &[Self::Disabled],
            Self::Disabled => &[Self::Enabled, Self::PendingDeletion],
            Self::PendingDeletion => &[Self::Enabled, Self::Disabled],
            Self::Destroyed => &[Self::PendingDeletion],
        }
    }

    /// Checks that `self → to` is allowed.
    pub fn check_transition(self, to: Self) -> Result<(), Error> {
        if Self::sources_of(to).contains(&self) {
            Ok(())
        } else {
            Err(Error::InvalidTransition { from: self, to })
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

    #[test]
    fn only_forward_moves() {
        assert!(Enabled.check_transition(Disabled).is_ok());
        assert!(Disabled.check_transition(Enabled).is_ok());
        assert!(Disabled.check_transition(PendingDeletion).is_ok());
        assert!(PendingDeletion.check_transition(Disabled).is_ok());
        assert!(PendingDeletion.check_transition(Destroyed).is_ok());
        assert!(PendingDeletion.check_transition(Enabled).is_err());
        for to in [Enabled, Disabled, PendingDeletion] {
            assert!(Destroyed.check_transition(to).is_err());
        }
        assert!(Enabled.check_transition(Destroyed).is_err());
        for s in [Enabled, Disabled, PendingDeletion, Destroyed] {
            assert_eq!(super::KeyState::parse(s.as_str()), Some(s));
        }
    }
}
