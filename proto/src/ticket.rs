//! The purchase ticket: what the cluster signs when a purchase opens, and
//! what a seller checks, offline, before serving the file to a buyer.
//!
//! A ticket is 145 bytes: a version byte (1), the [`Ticket`] fields
//! fixed-width big-endian in declaration order (81 bytes with the version),
//! then an ed25519 signature over `b"agora/ticket/v1" || those 81 bytes`.
//!
//! The signing key is derived from the cluster's token-signing seed, which
//! every node already holds, under its own BLAKE3 context string. Session
//! tokens are signed by the seed used directly, so neither key can ever
//! produce a signature that passes for the other's (see
//! [`ticket_signing_key`]).
//!
//! Pure: no I/O, and the clock is the caller's `now_ms`.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey, SIGNATURE_LENGTH};
use zeroize::Zeroize;

/// Length of an encoded, signed ticket.
pub const TICKET_LEN: usize = BODY_LEN + SIGNATURE_LENGTH;

/// The only encoding version this build writes and reads.
const VERSION: u8 = 1;

/// Length of the signed part: the version byte, four ids, the buyer's key
/// and two timestamps.
const BODY_LEN: usize = 1 + 8 * 4 + 32 + 8 * 2;

/// Prefix of the signed message, so a ticket signature can never pass for
/// a signature over anything else.
const SIGNING_DOMAIN: &[u8] = b"agora/ticket/v1";

/// BLAKE3 context of the ticket key derivation.
const KEY_CONTEXT: &str = "agora 2026-11 ticket signing key v1";

/// The ticket-signing key, derived from the cluster's token-signing seed:
/// `blake3::derive_key("agora 2026-11 ticket signing key v1", seed)` as an
/// ed25519 secret. Every node derives the same key, so whichever node leads
/// can issue tickets and every seller can check them against one public key.
#[must_use]
pub fn ticket_signing_key(token_seed: &[u8; 32]) -> SigningKey {
    let mut secret = blake3::derive_key(KEY_CONTEXT, token_seed);
    let key = SigningKey::from_bytes(&secret);
    secret.zeroize();
    key
}

/// What a ticket binds: one purchase of one listing, from one seller, by one
/// buyer identified by its key, for a limited time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The purchase this ticket opens.
    pub purchase_id: u64,
    /// The listing bought.
    pub listing_id: u64,
    /// The seller who must serve it.
    pub seller_id: u64,
    /// The buyer.
    pub buyer_id: u64,
    /// The buyer's registered ed25519 identity key: the key its TLS
    /// certificate must carry.
    pub buyer_key: [u8; 32],
    /// When the cluster issued the ticket, in ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// When the ticket stops being honoured, in ms since the Unix epoch.
    pub expires_at_ms: u64,
}

impl Ticket {
    /// Encodes the ticket and signs it with the cluster's ticket key (see
    /// [`ticket_signing_key`]); the result is [`TICKET_LEN`] bytes.
    #[must_use]
    pub fn sign(&self, key: &SigningKey) -> Vec<u8> {
        let body = self.body();
        let signature = key.sign(&signed_message(&body));
        let mut bytes = Vec::with_capacity(TICKET_LEN);
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&signature.to_bytes());
        bytes
    }

    /// Parses a ticket and checks the cluster's signature over it (strictly:
    /// no malleable or weak-key signatures). It does not check the expiry or
    /// who presents it; that is [`Ticket::check`]. Never panics.
    ///
    /// # Errors
    /// [`TicketError::Malformed`] for the wrong length or version, and
    /// [`TicketError::BadSignature`] when `key` did not sign these bytes.
    pub fn verify(bytes: &[u8], key: &VerifyingKey) -> Result<Ticket, TicketError> {
        if bytes.len() != TICKET_LEN {
            return Err(TicketError::Malformed(format!(
                "it is {} bytes, not {TICKET_LEN}; pass it on exactly as the cluster issued it",
                bytes.len()
            )));
        }
        let (body, signature) = bytes.split_at(BODY_LEN);
        let mut reader = Reader(body);
        let version = reader.u8()?;
        if version != VERSION {
            return Err(TicketError::Malformed(format!(
                "version {version} is not one this build reads (it reads {VERSION}); update \
                 Agora"
            )));
        }
        let signature = Signature::from_slice(signature).map_err(|_| TicketError::BadSignature)?;
        key.verify_strict(&signed_message(body), &signature)
            .map_err(|_| TicketError::BadSignature)?;
        Ok(Ticket {
            purchase_id: reader.u64()?,
            listing_id: reader.u64()?,
            seller_id: reader.u64()?,
            buyer_id: reader.u64()?,
            buyer_key: reader.array()?,
            issued_at_ms: reader.u64()?,
            expires_at_ms: reader.u64()?,
        })
    }

    /// The checks a seller makes before serving: the ticket has not expired
    /// at `now_ms` (it expires at `expires_at_ms` exactly, with no grace),
    /// it names this seller and this listing, and the peer presenting it
    /// authenticated with the buyer's key.
    ///
    /// # Errors
    /// The first check that fails, in that order.
    pub fn check(
        &self,
        now_ms: u64,
        seller_id: u64,
        listing_id: u64,
        presenter_key: &[u8; 32],
    ) -> Result<(), TicketError> {
        if now_ms >= self.expires_at_ms {
            return Err(TicketError::Expired {
                expires_at_ms: self.expires_at_ms,
            });
        }
        if self.seller_id != seller_id {
            return Err(TicketError::WrongSeller);
        }
        if self.listing_id != listing_id {
            return Err(TicketError::WrongListing);
        }
        if &self.buyer_key != presenter_key {
            return Err(TicketError::WrongBuyer);
        }
        Ok(())
    }

    /// The signed part of the encoding.
    fn body(&self) -> [u8; BODY_LEN] {
        let mut body = [0; BODY_LEN];
        let fields = [
            &[VERSION][..],
            &self.purchase_id.to_be_bytes(),
            &self.listing_id.to_be_bytes(),
            &self.seller_id.to_be_bytes(),
            &self.buyer_id.to_be_bytes(),
            &self.buyer_key,
            &self.issued_at_ms.to_be_bytes(),
            &self.expires_at_ms.to_be_bytes(),
        ];
        let mut at = 0;
        for field in fields {
            body[at..at + field.len()].copy_from_slice(field);
            at += field.len();
        }
        debug_assert_eq!(at, BODY_LEN);
        body
    }
}

/// What the signature covers: the domain prefix, then the body.
fn signed_message(body: &[u8]) -> Vec<u8> {
    [SIGNING_DOMAIN, body].concat()
}

/// Reads fixed-width fields off the front of a byte slice, refusing (not
/// panicking) when it runs out.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], TicketError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| TicketError::Malformed("it ends early".into()))?;
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, TicketError> {
        self.array().map(u8::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, TicketError> {
        self.array().map(u64::from_be_bytes)
    }
}

/// Why a ticket was refused.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum TicketError {
    /// The bytes are not a ticket this build can read.
    #[error("the ticket is malformed: {0}")]
    Malformed(String),
    /// The signature does not verify under the cluster's ticket key.
    #[error(
        "the ticket is not signed by this cluster; get a ticket from the cluster the listing \
         is on"
    )]
    BadSignature,
    /// The ticket's time is up.
    #[error(
        "the ticket expired at {expires_at_ms} (ms since the Unix epoch); the purchase has \
         lapsed, so open a new one"
    )]
    Expired {
        /// When it expired.
        expires_at_ms: u64,
    },
    /// The ticket names another seller.
    #[error("the ticket is for another seller; present it to the seller it names")]
    WrongSeller,
    /// The ticket names another listing.
    #[error("the ticket is for another listing; request the listing it names")]
    WrongListing,
    /// The peer presenting the ticket is not the buyer it names.
    #[error(
        "the ticket belongs to another buyer: your TLS key is not the one it names; connect \
         with the identity key you bought with"
    )]
    WrongBuyer,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ticket() -> Ticket {
        Ticket {
            purchase_id: 0x0101_0101_0101_0101,
            listing_id: 0x0202_0202_0202_0202,
            seller_id: 0x0303_0303_0303_0303,
            buyer_id: 0x0404_0404_0404_0404,
            buyer_key: [5; 32],
            issued_at_ms: 1_000,
            expires_at_ms: 61_000,
        }
    }

    fn cluster_key() -> SigningKey {
        ticket_signing_key(&[7; 32])
    }

    #[test]
    fn signs_and_verifies() {
        let key = cluster_key();
        let bytes = ticket().sign(&key);
        assert_eq!(bytes.len(), TICKET_LEN);
        assert_eq!(TICKET_LEN, 145);
        assert_eq!(Ticket::verify(&bytes, &key.verifying_key()), Ok(ticket()));
    }

    #[test]
    fn encoding_is_as_documented() {
        let key = cluster_key();
        let bytes = ticket().sign(&key);
        let mut body = vec![1];
        for id in 1..=4u8 {
            body.extend_from_slice(&[id; 8]);
        }
        body.extend_from_slice(&[5; 32]);
        body.extend_from_slice(&1_000u64.to_be_bytes());
        body.extend_from_slice(&61_000u64.to_be_bytes());
        assert_eq!(body.len(), 81);
        assert_eq!(&bytes[..81], &body[..]);
        let mut message = b"agora/ticket/v1".to_vec();
        message.extend_from_slice(&body);
        let signature = Signature::from_slice(&bytes[81..]).expect("64 bytes");
        assert!(key
            .verifying_key()
            .verify_strict(&message, &signature)
            .is_ok());
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let key = cluster_key().verifying_key();
        let bytes = ticket().sign(&cluster_key());
        for bit in 0..bytes.len() * 8 {
            let mut tampered = bytes.clone();
            tampered[bit / 8] ^= 1 << (bit % 8);
            match Ticket::verify(&tampered, &key) {
                Err(TicketError::Malformed(_)) => assert!(bit < 8, "bit {bit}"),
                Err(TicketError::BadSignature) => assert!(bit >= 8, "bit {bit}"),
                other => panic!("bit {bit}: {other:?}"),
            }
        }
    }

    #[test]
    fn wrong_lengths_are_malformed() {
        let key = cluster_key().verifying_key();
        let bytes = ticket().sign(&cluster_key());
        for len in [0, 1, 81, TICKET_LEN - 1] {
            assert!(
                matches!(
                    Ticket::verify(&bytes[..len], &key),
                    Err(TicketError::Malformed(_))
                ),
                "len {len}"
            );
        }
        let mut extended = bytes;
        extended.push(0);
        let error = Ticket::verify(&extended, &key).expect_err("too long");
        assert!(matches!(error, TicketError::Malformed(_)));
        assert!(error
            .to_string()
            .starts_with("the ticket is malformed: it is 146 bytes, not 145"));
    }

    #[test]
    fn another_key_is_a_bad_signature() {
        let bytes = ticket().sign(&cluster_key());
        let other = ticket_signing_key(&[8; 32]).verifying_key();
        assert_eq!(
            Ticket::verify(&bytes, &other),
            Err(TicketError::BadSignature)
        );
        // The token key (the seed itself) is another key too.
        let token_key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        assert_eq!(
            Ticket::verify(&bytes, &token_key),
            Err(TicketError::BadSignature)
        );
    }

    #[test]
    fn the_ticket_key_is_not_the_token_key() {
        let seed = [7; 32];
        assert_ne!(
            ticket_signing_key(&seed).to_bytes(),
            SigningKey::from_bytes(&seed).to_bytes()
        );
        assert_eq!(
            ticket_signing_key(&seed).to_bytes(),
            blake3::derive_key("agora 2026-11 ticket signing key v1", &seed)
        );
    }

    #[test]
    fn checks() {
        let t = ticket();
        let (seller, listing, buyer) = (t.seller_id, t.listing_id, t.buyer_key);
        assert_eq!(t.check(1_000, seller, listing, &buyer), Ok(()));
        assert_eq!(t.check(60_999, seller, listing, &buyer), Ok(()));
        let expired = Err(TicketError::Expired {
            expires_at_ms: 61_000,
        });
        assert_eq!(t.check(61_000, seller, listing, &buyer), expired);
        assert_eq!(t.check(u64::MAX, seller, listing, &buyer), expired);
        assert_eq!(
            t.check(0, seller + 1, listing, &buyer),
            Err(TicketError::WrongSeller)
        );
        assert_eq!(
            t.check(0, seller, listing + 1, &buyer),
            Err(TicketError::WrongListing)
        );
        assert_eq!(
            t.check(0, seller, listing, &[6; 32]),
            Err(TicketError::WrongBuyer)
        );
        assert!(TicketError::WrongBuyer.to_string().starts_with(
            "the ticket belongs to another buyer: your TLS key is not the one it names"
        ));
    }

    proptest! {
        #[test]
        fn verify_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let key = cluster_key().verifying_key();
            prop_assert!(Ticket::verify(&bytes, &key).is_err());
        }

        #[test]
        fn verify_never_panics_on_well_shaped_bytes(
            rest in prop::collection::vec(any::<u8>(), TICKET_LEN - 1),
        ) {
            let mut bytes = vec![VERSION];
            bytes.extend_from_slice(&rest);
            let key = cluster_key().verifying_key();
            prop_assert_eq!(Ticket::verify(&bytes, &key), Err(TicketError::BadSignature));
        }

        #[test]
        fn round_trip(
            ids in any::<[u64; 4]>(),
            buyer_key in any::<[u8; 32]>(),
            issued_at_ms in any::<u64>(),
            expires_at_ms in any::<u64>(),
            seed in any::<[u8; 32]>(),
        ) {
            let ticket = Ticket {
                purchase_id: ids[0],
                listing_id: ids[1],
                seller_id: ids[2],
                buyer_id: ids[3],
                buyer_key,
                issued_at_ms,
                expires_at_ms,
            };
            let key = ticket_signing_key(&seed);
            prop_assert_eq!(Ticket::verify(&ticket.sign(&key), &key.verifying_key()), Ok(ticket));
        }
    }
}
