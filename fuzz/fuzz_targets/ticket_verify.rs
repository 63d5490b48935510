//! [`Ticket::verify`] on arbitrary bytes with a fixed cluster key.
//!
//! Properties checked, besides "never panics": only the cluster's own
//! signature passes, so any ticket that verifies re-signs (ed25519 signing
//! is deterministic) to exactly the bytes given; and a real ticket damaged
//! anywhere never verifies.
//!
//! Random bytes never carry a valid signature, so each input is also
//! applied as damage to a real signed ticket (see [`damaged`]): that reaches
//! the version check, the signature parsing and the strict verification
//! with no seed corpus.

#![no_main]

use std::sync::OnceLock;

use agora_proto::ticket::{ticket_signing_key, Ticket};
use ed25519_dalek::{SigningKey, VerifyingKey};
use libfuzzer_sys::fuzz_target;

/// The cluster's token-signing seed in this target.
const TOKEN_SEED: [u8; 32] = [7; 32];

/// The ticket the damage is applied to.
const TICKET: Ticket = Ticket {
    purchase_id: 1,
    listing_id: 2,
    seller_id: 3,
    buyer_id: 4,
    buyer_key: [5; 32],
    issued_at_ms: 1_000,
    expires_at_ms: 61_000,
};

/// The cluster's ticket keys and [`TICKET`] signed with them.
struct Fixture {
    signing: SigningKey,
    verifying: VerifyingKey,
    signed: Vec<u8>,
}

/// The fixture, made once per fuzzing process.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let signing = ticket_signing_key(&TOKEN_SEED);
        let signed = TICKET.sign(&signing);
        Fixture {
            verifying: signing.verifying_key(),
            signing,
            signed,
        }
    })
}

/// Verifies `bytes` and checks the properties in the module docs.
fn check(fixture: &Fixture, bytes: &[u8]) {
    if let Ok(ticket) = Ticket::verify(bytes, &fixture.verifying) {
        assert!(
            ticket.sign(&fixture.signing) == bytes,
            "a ticket verified that the cluster key did not sign: {ticket:?}"
        );
    }
}

/// The signed ticket damaged by `data`: the first two bytes pick an offset
/// into it and the rest is XORed in from there on (whatever runs past the
/// end is appended). `None` when the damage changes nothing.
fn damaged(fixture: &Fixture, data: &[u8]) -> Option<Vec<u8>> {
    let (offset, damage) = data.split_at_checked(2)?;
    let mut bytes = fixture.signed.clone();
    let offset = (usize::from(offset[0]) << 8 | usize::from(offset[1])) % (bytes.len() + 1);
    for (i, d) in damage.iter().enumerate() {
        match bytes.get_mut(offset + i) {
            Some(byte) => *byte ^= d,
            None => bytes.push(*d),
        }
    }
    (bytes != fixture.signed).then_some(bytes)
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    check(fixture, data);
    if let Some(bytes) = damaged(fixture, data) {
        assert!(
            Ticket::verify(&bytes, &fixture.verifying).is_err(),
            "a damaged ticket verified"
        );
    }
});
