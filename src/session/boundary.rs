//! Where a leased server connection stands in the protocol: what the
//! server still owes and the transaction status it last reported. This is
//! half of the isolation boundary (the other half, session state the
//! connection may hold, is `TxnState`'s taint); `recover::Recovery::plan`
//! is the one place that turns both into "back to the pool as it is".
//!
//! One enum, changed only by `Position::step`, so every path (the pump's
//! sinks, the session's held-back ReadyForQuery, recovery) moves it the
//! same way.

/// The transaction status byte of ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InBlock,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TxStatus {
    /// The status byte, as ReadyForQuery carries it.
    pub fn as_byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InBlock => b'T',
            TxStatus::Failed => b'E',
        }
    }

    /// Any byte other than `I` and `T` counts as failed: the safe reading
    /// of a status the proxy does not know.
    pub fn from_byte(b: u8) -> TxStatus {
        match b {
            b'I' => TxStatus::Idle,
            b'T' => TxStatus::InBlock,
            _ => TxStatus::Failed,
        }
    }
}

/// What the server owes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Nothing: the last ReadyForQuery said `status`.
    Ready(TxStatus),
    /// `owed` ReadyForQuery messages, and, if `unsynced`, the replies to
    /// extended-protocol messages no Sync has closed yet; `last` is the
    /// status of the last ReadyForQuery.
    Busy {
        owed: u32,
        unsynced: bool,
        last: TxStatus,
    },
}

/// What moves a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A Query or FunctionCall went to the server: one more ReadyForQuery.
    Request,
    /// A Sync went to the server; `answered`: it will get a ReadyForQuery
    /// (not one the server ignores during copy-in).
    Sync { answered: bool },
    /// Parse, Bind, Describe, Execute or Close went to the server.
    Extended,
    /// A ReadyForQuery arrived with this status byte.
    Ready(u8),
    /// This many owed ReadyForQuery messages will not come after all
    /// (Queries skipped after an error, Syncs ignored during copy-in).
    Dropped(u32),
}

impl Default for Position {
    fn default() -> Position {
        Position::Ready(TxStatus::Idle)
    }
}

impl Position {
    /// The one transition function.
    #[inline]
    pub fn step(self, ev: Event) -> Position {
        let (owed, unsynced, last) = self.parts();
        let (owed, unsynced, last) = match ev {
            Event::Request => (owed + 1, unsynced, last),
            Event::Sync { answered } => (owed + u32::from(answered), false, last),
            Event::Extended => (owed, true, last),
            Event::Ready(status) => (
                owed.saturating_sub(1),
                unsynced,
                TxStatus::from_byte(status),
            ),
            Event::Dropped(n) => (owed.saturating_sub(n), unsynced, last),
        };
        if owed == 0 && !unsynced {
            Position::Ready(last)
        } else {
            Position::Busy {
                owed,
                unsynced,
                last,
            }
        }
    }

    fn parts(self) -> (u32, bool, TxStatus) {
        match self {
            Position::Ready(s) => (0, false, s),
            Position::Busy {
                owed,
                unsynced,
                last,
            } => (owed, unsynced, last),
        }
    }

    /// ReadyForQuery messages still owed.
    pub fn owed(self) -> u32 {
        self.parts().0
    }

    /// Extended-protocol messages were sent without a Sync after them.
    pub fn unsynced(self) -> bool {
        self.parts().1
    }

    /// The status of the last ReadyForQuery.
    pub fn last_status(self) -> TxStatus {
        self.parts().2
    }

    /// At a transaction boundary with nothing owed.
    pub fn is_idle(self) -> bool {
        self == Position::Ready(TxStatus::Idle)
    }

    /// Nothing owed, though a transaction block may be open.
    pub fn is_quiet(self) -> bool {
        matches!(self, Position::Ready(_))
    }

    /// Exactly one ReadyForQuery owed and no unsynced messages: the next
    /// ReadyForQuery ends everything the client asked for.
    pub fn awaits_last_ready(self) -> bool {
        matches!(
            self,
            Position::Busy {
                owed: 1,
                unsynced: false,
                ..
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_is_ready_only_after_its_last_ready_for_query() {
        let p = Position::default()
            .step(Event::Request)
            .step(Event::Extended)
            .step(Event::Extended)
            .step(Event::Sync { answered: true });
        assert_eq!(p.owed(), 2);
        assert!(!p.unsynced() && !p.is_quiet());
        let p = p.step(Event::Ready(b'T'));
        assert!(p.awaits_last_ready());
        let p = p.step(Event::Ready(b'I'));
        assert!(p.is_idle());
    }

    #[test]
    fn unsynced_messages_keep_it_busy_and_unknown_status_is_failed() {
        let p = Position::default().step(Event::Extended);
        assert!(!p.is_quiet() && p.owed() == 0);
        let p = p.step(Event::Sync { answered: false });
        assert_eq!(p, Position::Ready(TxStatus::Idle));
        let p = Position::default()
            .step(Event::Request)
            .step(Event::Ready(b'?'));
        assert_eq!(p, Position::Ready(TxStatus::Failed));
        let p = Position::default()
            .step(Event::Request)
            .step(Event::Request)
            .step(Event::Dropped(5));
        assert!(p.is_idle());
    }
}
