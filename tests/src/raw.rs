//! Calling any RPC with hand-made bytes: a codec that passes encoded
//! messages through unchanged, and a caller that sends a body to a method
//! by name and hands back the raw answer.
//!
//! Typed prost clients cannot send what the matrices need to send (invalid
//! UTF-8 in a string field, an enum number no variant has, a malformed or
//! oversized message), and a table of every RPC is easier to drive by name
//! than through one generated client per service.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use prost::bytes::{Buf as _, BufMut as _};
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::Status;

/// Passes encoded messages through unchanged: the caller builds each
/// request itself and reads the answer's bytes (or status).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

/// [`RawCodec`]'s encoder.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawEncoder;

/// [`RawCodec`]'s decoder.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut bytes = vec![0_u8; src.remaining()];
        src.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

/// Calls `rpc` (`package.Service/Method`) on `channel` with `body`,
/// presenting `token` as a bearer token when given; waits at most
/// `timeout`. The outer error is the test's (no answer in time, a bad
/// path); the inner one is the server's answer.
///
/// # Errors
/// When the channel is not ready or no answer comes within `timeout`.
pub async fn call_raw(
    channel: &Channel,
    rpc: &str,
    body: Vec<u8>,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Result<Vec<u8>, Status>> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.context("the channel is not ready")?;
    let mut request = tonic::Request::new(body);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    let path: tonic::codegen::http::uri::PathAndQuery = format!("/{rpc}").parse()?;
    let answer = tokio::time::timeout(timeout, grpc.unary(request, path, RawCodec))
        .await
        .with_context(|| format!("{rpc} did not answer within {timeout:?}"))?;
    Ok(answer.map(tonic::Response::into_inner))
}

/// Every RPC in the descriptor set the server registers for reflection
/// (`agora_proto::FILE_DESCRIPTOR_SET`), as `package.Service/Method` in
/// descriptor order, leaving out the services named in `skip` (returned
/// apart): the rows a matrix over every RPC must have.
///
/// # Errors
/// When the descriptor set does not decode.
pub fn descriptor_rpcs(skip: &[(&str, &str)]) -> anyhow::Result<(Vec<String>, BTreeSet<String>)> {
    let set = prost_types::FileDescriptorSet::decode(agora_proto::FILE_DESCRIPTOR_SET)
        .context("the descriptor set does not decode")?;
    let mut all = Vec::new();
    let mut skipped = BTreeSet::new();
    for file in &set.file {
        for service in &file.service {
            let name = format!("{}.{}", file.package(), service.name());
            if skip.iter().any(|(s, _)| *s == name) {
                skipped.insert(name);
                continue;
            }
            for method in &service.method {
                all.push(format!("{name}/{}", method.name()));
            }
        }
    }
    Ok((all, skipped))
}
