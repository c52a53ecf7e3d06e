//! Placeholder until the drain watch lands.

/// What keeps a draining generation busy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Busy {
    pub queued: u32,
    pub open: u32,
    pub handshakes: u32,
}

impl Busy {
    pub fn idle(&self) -> bool {
        self.queued == 0 && self.open == 0 && self.handshakes == 0
    }
}

pub struct Watch;
impl Watch {
    pub fn new(_ports: Vec<u16>, _members: Vec<u64>) -> Watch {
        Watch
    }
    pub fn look(&mut self, _pids: &[i32]) -> std::io::Result<Busy> {
        Err(std::io::Error::other("placeholder"))
    }
}
