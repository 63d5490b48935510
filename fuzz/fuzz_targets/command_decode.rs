//! Log entries, commands and Raft messages off the disk or the wire: every
//! bincode decoder a node runs on bytes it did not just make, behind the
//! protobuf envelopes the Raft listener receives them in.
//!
//! What a node decodes, and where from:
//!
//! - the Raft log file: an [`Entry`] per row, the vote and log ids in its
//!   `meta` table;
//! - the state database: the last applied log id and membership, and the
//!   remembered [`Outcome`] of each request id;
//! - the Raft listener (`RaftService`): a [`RaftPayload`] carrying an
//!   append-entries, vote or install-snapshot request, and a
//!   [`ForwardWriteRequest`] carrying a [`Proposal`];
//! - the Raft client: the replies to those, and a [`ForwardWriteReply`]
//!   carrying a write's result.
//!
//! Properties checked, besides "never panics" and "never allocates more
//! than libFuzzer's limit" (`-malloc_limit_mb`, 2 GiB by default, also for
//! a forged length prefix of 2^60):
//!
//! - whatever decodes encodes again, and that encoding decodes back to a
//!   value that encodes to the same bytes (stable round trip);
//! - a decoded proposal, and every proposal of a decoded entry, goes
//!   through the checks the node runs on it before proposing (`validate`,
//!   `body_hash`) without panicking.
//!
//! Random bytes seldom have the shape of a long entry, so an input whose
//! first byte is odd is applied as damage to a real encoding instead (see
//! [`damaged`]): a batch of real commands, a Raft append carrying them, a
//! forwarded write.

#![no_main]

use std::sync::OnceLock;

use agora_proto::raft::{ForwardWriteReply, ForwardWriteRequest, RaftPayload};
use agora_server::error::WriteError;
use agora_server::node::Applied;
use agora_server::raft::apply_check::sample_log;
use agora_server::raft::command::{body_hash, Command, Outcome, Proposal};
use agora_server::raft::network::{decode, encode};
use agora_server::raft::typ::{Entry, LogId, NodeId, RaftError, StoredMembership, Vote};
use agora_server::raft::TypeConfig;
use libfuzzer_sys::fuzz_target;
use openraft::error::InstallSnapshotError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::EntryPayload;
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `bytes` as `T`; when that works, checks the round trip.
fn decodes<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let value: T = decode(bytes).ok()?;
    let encoded = encode(&value).expect("a decoded value encodes");
    let again: T = decode(&encoded).expect("a value's own encoding decodes");
    assert_eq!(
        encode(&again).expect("it encodes again"),
        encoded,
        "the round trip is not stable"
    );
    Some(value)
}

/// What the node does with a proposal before it spends a log entry on it.
fn inspect(proposal: &Proposal) {
    let _ = proposal.op.validate();
    let _ = body_hash(&proposal.op);
    let _ = proposal.op.touches_catalogue();
}

fn inspect_entry(entry: &Entry) {
    if let EntryPayload::Normal(command) = &entry.payload {
        command.proposals.iter().for_each(inspect);
    }
}

/// Every decoder, on the same bytes.
fn decode_all(bytes: &[u8]) {
    // The Raft log file and its meta table.
    if let Some(entry) = decodes::<Entry>(bytes) {
        inspect_entry(&entry);
    }
    decodes::<Option<Vote>>(bytes);
    decodes::<Option<LogId>>(bytes);
    // The state database.
    decodes::<LogId>(bytes);
    decodes::<StoredMembership>(bytes);
    decodes::<Outcome>(bytes);
    if let Some(command) = decodes::<Command>(bytes) {
        command.proposals.iter().for_each(inspect);
    }
    // The Raft listener.
    if let Some(append) = decodes::<AppendEntriesRequest<TypeConfig>>(bytes) {
        append.entries.iter().for_each(inspect_entry);
    }
    decodes::<VoteRequest<NodeId>>(bytes);
    decodes::<InstallSnapshotRequest<TypeConfig>>(bytes);
    if let Some(proposal) = decodes::<Proposal>(bytes) {
        inspect(&proposal);
    }
    // The Raft client: the peers' answers.
    decodes::<Result<AppendEntriesResponse<NodeId>, RaftError>>(bytes);
    decodes::<Result<VoteResponse<NodeId>, RaftError>>(bytes);
    decodes::<Result<InstallSnapshotResponse<NodeId>, RaftError<InstallSnapshotError>>>(bytes);
    decodes::<Result<Applied, WriteError>>(bytes);
}

/// The protobuf envelopes, then what they carry.
fn decode_envelopes(bytes: &[u8]) {
    if let Ok(payload) = RaftPayload::decode(bytes) {
        decode_all(&payload.data);
    }
    if let Ok(forward) = ForwardWriteRequest::decode(bytes) {
        if let Some(proposal) = decodes::<Proposal>(&forward.proposal) {
            inspect(&proposal);
        }
    }
    if let Ok(reply) = ForwardWriteReply::decode(bytes) {
        decodes::<Result<Applied, WriteError>>(&reply.result);
    }
}

/// Real encodings to damage: each sample entry, the whole sample log as
/// one batch command, a Raft append of the log (bare and in its protobuf
/// envelope), and a forwarded write (bare and enveloped).
fn samples() -> &'static [Vec<u8>] {
    static SAMPLES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let log = sample_log();
        let mut out: Vec<Vec<u8>> = log.iter().map(|e| encode(e).expect("encodes")).collect();
        let proposals: Vec<Proposal> = log
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(c) => Some(c.proposals.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        let batch = Command {
            time_ms: 1_700_000_000_000,
            proposals: proposals.clone(),
        };
        out.push(encode(&batch).expect("encodes"));
        let last = log.last().map(|e| e.log_id);
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: log,
            leader_commit: last,
        };
        let data = encode(&append).expect("encodes");
        out.push(RaftPayload { data: data.clone() }.encode_to_vec());
        out.push(data);
        for proposal in proposals.iter().take(3) {
            let bytes = encode(proposal).expect("encodes");
            out.push(
                ForwardWriteRequest {
                    proposal: bytes.clone(),
                }
                .encode_to_vec(),
            );
            out.push(bytes);
        }
        out
    })
}

/// `data` as damage to a sample: byte 0 picks the sample, bytes 1-2 an
/// offset, byte 3 whether to cut the sample there; the rest is XORed in
/// from the offset.
fn damaged(data: &[u8]) -> Option<Vec<u8>> {
    let [pick, hi, lo, cut, xor @ ..] = data else {
        return None;
    };
    let samples = samples();
    let mut bytes = samples[usize::from(*pick) % samples.len()].clone();
    let offset = usize::from(u16::from_be_bytes([*hi, *lo])) % bytes.len().max(1);
    if cut % 4 == 0 {
        bytes.truncate(offset);
    }
    for (b, x) in bytes.iter_mut().skip(offset).zip(xor) {
        *b ^= x;
    }
    Some(bytes)
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode % 2 == 1 {
        match damaged(rest) {
            Some(b) => b,
            None => return,
        }
    } else {
        rest.to_vec()
    };
    decode_all(&bytes);
    decode_envelopes(&bytes);
});
